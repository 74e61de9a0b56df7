"""The event catalog, payload validation, subjects and recipient lists: pure functions."""

import pytest

from notifications.emails import event_subject, header_safe, subject_line
from notifications.events import (
    CATALOG,
    DATETIME,
    INTEGER,
    STRING,
    STRINGS,
    InvalidEvent,
    labels,
    payload_errors,
    public_types,
    type_errors,
    validate,
)
from notifications.forms import split_recipients
from notifications.models import Integration
from notifications.tokens import bearer, digest
from notifications.triggering import matching

REQUIRED_TYPES = {
    "api.deployed",
    "api.deployment_failed",
    "api.retired",
    "subscription.requested",
    "subscription.approved",
    "subscription.rejected",
    "gateway.unreachable",
    "certificate.expiring",
    "user.invited",
    "user.joined",
    "smtp.settings_changed",
}


def test_the_catalog_has_every_type_the_issue_names_with_label_description_and_fields():
    assert {e.type for e in public_types()} >= REQUIRED_TYPES
    for spec in CATALOG.values():
        assert spec.label and spec.description and spec.fields and spec.subject
        assert all(f.type in (STRING, INTEGER, STRINGS, DATETIME) for f in spec.fields)


def test_the_invitation_and_settings_events_have_the_agreed_fields():
    def shape(event_type):
        return {f.name: (f.type, f.required) for f in CATALOG[event_type].fields}

    assert shape("user.invited") == {
        "email": (STRING, True),
        "invited_by": (STRING, True),
        "expires_at": (DATETIME, True),
    }
    assert shape("user.joined") == {
        "username": (STRING, True),
        "email": (STRING, True),
        "name": (STRING, False),
        "invited_by": (STRING, False),
    }
    assert shape("smtp.settings_changed") == {
        "fields": (STRINGS, True),
        "changed_by": (STRING, False),
    }


def test_a_valid_payload_has_no_errors():
    assert payload_errors("certificate.expiring", CERT) == {}
    assert payload_errors("user.joined", {"username": "bob", "email": "b@example.com"}) == {}
    validate("smtp.settings_changed", {"fields": ["Server", "Port"]})


CERT = {
    "subject": "CN=api.example.com",
    "gateway": "gw-eu-1",
    "expires_at": "2026-12-24T00:00:00Z",
    "days_left": 29,
}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"subject": None}, "subject", "This field is required."),
        ({"gateway": ""}, "gateway", "This field is required."),
        ({"days_left": "29"}, "days_left", "Expected an integer, got a string."),
        ({"days_left": True}, "days_left", "Expected an integer, got a boolean."),
        ({"days_left": 2.5}, "days_left", "Expected an integer, got a number."),
        ({"subject": 7}, "subject", "Expected a string, got a number."),
        ({"subject": "x" * 1001}, "subject", "At most 1000 characters."),
        ({"expires_at": "next tuesday"}, "expires_at", "Not an ISO 8601 date and time"),
        ({"expires_at": 1767225600}, "expires_at", "Expected an ISO 8601 date and time string"),
        ({"gatway": "x"}, "gatway", "Did you mean 'gateway'?"),
    ],
)
def test_payload_errors_name_the_field_and_the_problem(change, field, message):
    payload = {**CERT, **change}
    if change.get("subject", "") is None:
        del payload["subject"]
    errors = payload_errors("certificate.expiring", payload)
    assert field in errors, errors
    assert message in errors[field][0]


def test_list_fields_and_non_object_payloads():
    assert (
        "list of strings"
        in payload_errors("smtp.settings_changed", {"fields": "Server"})["fields"][0]
    )
    assert payload_errors("smtp.settings_changed", {"fields": ["a", 1]})
    assert payload_errors("smtp.settings_changed", {"fields": []}) == {
        "fields": ["This field is required."]
    }
    assert payload_errors("api.retired", ["orders"]) == {
        "payload": ["Expected a JSON object, got a list."]
    }


def test_unknown_types_suggest_the_nearest_or_list_them_all():
    assert "Did you mean 'api.deployed'?" in type_errors("api.deploy")["type"][0]
    listed = type_errors("weather.sunny")["type"][0]
    assert "Unknown event type 'weather.sunny'" in listed and "user.invited" in listed
    assert "required" in type_errors(None)["type"][0]
    # The test notification is the product's own: not for the API or the command.
    assert type_errors("integration.test")
    assert type_errors("integration.test", allow_internal=True) == {}


def test_invalid_event_carries_field_errors_and_reads_well():
    with pytest.raises(InvalidEvent) as caught:
        validate("user.invited", {"email": "carol@example.com"})
    assert caught.value.errors == {
        "invited_by": ["This field is required."],
        "expires_at": ["This field is required."],
    }
    assert "invited_by: This field is required." in str(caught.value)


@pytest.mark.parametrize(
    ("prefix", "subject", "expected"),
    [
        ("", "API orders deployed", "API orders deployed"),
        ("[Prod]", "API orders deployed", "[Prod] API orders deployed"),
        ("", "a\r\nBcc: victim@example.com", "a Bcc: victim@example.com"),
        ("[x]\n", "tab\there\x00nul\x7fdel\x85nel\u2028ls", "[x] tab here nul del nel ls"),
        ("  ", "  spaced   out  ", "spaced out"),
    ],
)
def test_subjects_are_one_header_safe_line(prefix, subject, expected):
    assert subject_line(prefix, subject) == expected


def test_long_subjects_are_cut_with_an_ellipsis():
    line = subject_line("[p]", "word " * 100)
    assert len(line) <= 200 and line.endswith("word…")


def test_event_subjects_fill_the_catalog_template_and_leave_missing_optionals_blank():
    spec = CATALOG["api.retired"]
    assert event_subject(spec, {"api": "orders"}) == "API orders  retired"
    assert header_safe(event_subject(spec, {"api": "orders"})) == "API orders retired"
    assert event_subject(spec, {"api": "{version.__class__}", "version": "2"}) == (
        "API {version.__class__} 2 retired"
    )
    assert (
        event_subject(CATALOG["smtp.settings_changed"], {"fields": ["Server", "Port"]})
        == "SMTP settings changed"
    )


def test_recipient_lists_split_on_commas_semicolons_and_lines_without_duplicates():
    valid, invalid = split_recipients("a@example.com, B@example.com;\nb@EXAMPLE.com  c@x.org\n")
    assert valid == ["a@example.com", "B@example.com", "c@x.org"]
    assert invalid == []
    valid, invalid = split_recipients("ok@example.com, not-an-address, @example.com")
    assert valid == ["ok@example.com"] and invalid == ["not-an-address", "@example.com"]


def test_matching_takes_enabled_subscribed_integrations_with_recipients():
    r = ["a@example.com"]
    everything = Integration(name="all", all_events=True, recipients=r)
    deploys = Integration(name="deploys", events=["api.deployed"], recipients=r)
    off = Integration(name="off", all_events=True, enabled=False, recipients=r)
    empty = Integration(name="empty", all_events=True, recipients=[])
    found = matching([everything, deploys, off, empty], "api.deployed")
    assert [i.name for i in found] == ["all", "deploys"]
    assert [i.name for i in matching([everything, deploys], "api.retired")] == ["all"]


def test_bearer_header_parsing_and_hashing():
    assert bearer("Bearer gm_abc") == "gm_abc"
    assert bearer("bearer   gm_abc ") == "gm_abc"
    assert bearer("Basic dXNlcjpwdw==") is None
    assert bearer("Bearer") is None
    assert bearer("") is None
    assert digest("gm_abc") == digest("gm_abc") != digest("gm_abd")
    assert len(digest("gm_abc")) == 64


def test_labels_follow_the_catalog_order_and_keep_unknown_types_by_name():
    assert labels(["user.joined", "api.deployed", "gone.away"]) == [
        "API deployed",
        "User joined",
        "gone.away",
    ]


def test_the_products_own_events_are_refused_from_outside_and_still_subscribable():
    product_only = {e.type for e in CATALOG.values() if e.product_only}
    assert product_only == {
        "user.invited",
        "user.joined",
        "smtp.settings_changed",
        "smtp.credential_expiring",
    }
    assert product_only <= {e.type for e in public_types()}  # integrations may subscribe
    for event_type in product_only:
        assert type_errors(event_type) == {}
        [message] = type_errors(event_type, from_outside=True)["type"]
        assert message.startswith(f"{event_type} is raised by Gateway Manager itself")
    # From outside, a near miss is not steered towards a type it may not raise.
    assert "user.invited" not in type_errors("user.invite", from_outside=True)["type"][0]


def test_integer_fields_are_bounded():
    assert payload_errors("certificate.expiring", {**CERT, "days_left": -1_000_000_000}) == {}
    errors = payload_errors("certificate.expiring", {**CERT, "days_left": 10**20})
    assert errors == {
        "days_left": ["Expected an integer between -1,000,000,000 and 1,000,000,000."]
    }


def test_the_api_rate_is_read_from_the_setting_and_windows_end_on_the_unit():
    from django.core.exceptions import ImproperlyConfigured

    from notifications.ratelimit import Rate, parse_rate, window

    assert parse_rate("120/minute") == Rate(120, "minute")
    assert parse_rate(" 5 / Seconds ") == Rate(5, "second")
    assert str(parse_rate("1/hour")) == "1 request per hour"
    for bad in ["", "120", "0/minute", "ten/minute", "5/fortnight"]:
        with pytest.raises(ImproperlyConfigured, match="API_RATE_LIMIT must look like"):
            parse_rate(bad)
    assert window(600.0, Rate(3, "minute")) == (10, 60)
    assert window(659.2, Rate(3, "minute")) == (10, 1)
    assert window(659.99, Rate(3, "minute")) == (10, 1)
