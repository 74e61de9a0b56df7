"""Issue 10, hole 7, against the real HTTP API, the real command and the real pages:
product-only events, bodies that used to crash the API, and the API's rate limit."""

from __future__ import annotations

import io
import json

import pytest
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import override_settings

from notifications import ratelimit
from notifications.models import Event, Integration, OutboundEmail
from notifications.tokens import create
from tests.conftest import make_user

URL = "/api/v1/events"
pytestmark = pytest.mark.django_db

# Valid payloads: the only thing wrong with forging them is who sends them.
PRODUCT_EVENTS = {
    "smtp.settings_changed": {"fields": ["Password"], "changed_by": "alice"},
    "user.invited": {
        "email": "mallory@example.com",
        "invited_by": "alice",
        "expires_at": "2026-12-24T00:00:00+00:00",
    },
    "user.joined": {"username": "mallory", "email": "mallory@example.com"},
}
DEPLOYED = {"api": "orders", "version": "2.1.0", "gateway": "gw-eu-1"}


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    cache.clear()  # the counters live in the cache, which outlives a test's transaction
    yield
    cache.clear()


def new_secret(name: str = "CI pipeline") -> str:
    return create(name, make_user(f"maker-{name.replace(' ', '-')}"))[1]


def post(client, body, secret: str | None = None, **extra):
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", headers=headers, **extra)


def audit_integration() -> Integration:
    return Integration.objects.create(
        name="Audit", recipients=["security@example.com"], all_events=True
    )


# --- (a) only the product raises its own events ---


@pytest.mark.parametrize("event_type", sorted(PRODUCT_EVENTS))
def test_an_api_token_cannot_forge_the_products_own_events(client, event_type):
    audit_integration()
    response = post(
        client, {"type": event_type, "payload": PRODUCT_EVENTS[event_type]}, new_secret()
    )
    assert response.status_code == 400, response.content
    [message] = response.json()["errors"]["type"]
    assert "raised by Gateway Manager itself" in message
    assert not Event.objects.exists()
    assert not OutboundEmail.objects.exists()  # no forged audit notice in anyone's inbox


@pytest.mark.parametrize("event_type", sorted(PRODUCT_EVENTS))
def test_the_command_refuses_the_products_own_events_too(event_type):
    audit_integration()
    with pytest.raises(CommandError) as caught:
        call_command("trigger_event", event_type, "--data", json.dumps(PRODUCT_EVENTS[event_type]))
    assert "raised by Gateway Manager itself" in str(caught.value)
    assert not Event.objects.exists()


def test_the_catalog_listing_marks_the_product_only_types():
    out = io.StringIO()
    call_command("trigger_event", "--list", stdout=out)
    lines = out.getvalue().splitlines()
    heads = {line.split()[0]: line for line in lines if line and not line.startswith(" ")}
    for event_type in PRODUCT_EVENTS:
        assert "raised by Gateway Manager only" in heads[event_type], heads[event_type]
    assert "raised by Gateway Manager only" not in heads["api.deployed"]


def test_integrations_can_still_subscribe_to_the_products_own_events(admin_client):
    page = admin_client.get("/integrations/new/").content.decode()
    for event_type in PRODUCT_EVENTS:
        assert f'value="{event_type}"' in page, event_type


def test_the_product_itself_still_raises_them():
    import notifications

    audit_integration()
    event = notifications.trigger("user.joined", PRODUCT_EVENTS["user.joined"])
    assert event.source == "product" and event.dispatches.count() == 1


# --- (b) bodies that used to crash the API ---


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "body",
    [
        nested(30_000),  # the whole body
        '{"type": "api.deployed", "payload": {"api": ' + nested(5_000) + "}}",
        '{"type": "api.deployed", "payload": ' + '{"a": ' * 3_000 + "1" + "}" * 3_001,
    ],
    ids=["body", "payload field", "payload"],
)
def test_deeply_nested_json_is_a_400_with_a_field_error(client, body):
    response = post(client, body, new_secret())
    assert response.status_code == 400, response.status_code
    [message] = response.json()["errors"]["body"]
    assert "nested" in message and "levels" in message
    assert not Event.objects.exists()


def test_a_5000_digit_number_is_a_400_with_a_field_error(client):
    big = "9" * 5_000
    body = (
        '{"type": "certificate.expiring", "payload": {"subject": "CN=x", "gateway": "gw", '
        f'"expires_at": "2026-12-24T00:00:00Z", "days_left": {big}}}}}'
    )
    response = post(client, body, new_secret())
    assert response.status_code == 400, response.status_code
    [message] = response.json()["errors"]["body"]
    assert "5,000 digits" in message
    assert not Event.objects.exists()


def test_an_integer_field_is_bounded(client):
    payload = {
        "subject": "CN=x",
        "gateway": "gw",
        "expires_at": "2026-12-24T00:00:00Z",
        "days_left": 10**20,
    }
    response = post(client, {"type": "certificate.expiring", "payload": payload}, new_secret())
    assert response.status_code == 400
    assert "between" in response.json()["errors"]["days_left"][0]


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_constants_are_refused(client, constant):
    body = '{"type": "api.retired", "payload": {"api": "a", "version": ' + constant + "}}"
    response = post(client, body, new_secret())
    assert response.status_code == 400
    assert constant in response.json()["errors"]["body"][0]


# --- (c) the rate limit ---


@override_settings(API_RATE_LIMIT="3/minute")
def test_a_token_past_its_rate_gets_429_with_retry_after_and_others_are_not_affected(client):
    first, second = new_secret("first"), new_secret("second")
    body = {"type": "api.retired", "payload": {"api": "legacy"}}
    for _ in range(3):
        assert post(client, body, first).status_code == 202
    refused = post(client, body, first)
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    retry_after = refused["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert "3 requests per minute" in refused.json()["errors"]["token"][0]
    assert Event.objects.count() == 3
    assert post(client, body, second).status_code == 202  # another token: its own budget


@override_settings(API_RATE_LIMIT="3/minute")
def test_a_request_that_finds_the_budget_spent_when_it_is_counted_keeps_nothing(
    client, monkeypatch
):
    # Another worker spent the budget between this request's look at it and its count (the
    # look is stood in for by one that never sees it spent): the event is not kept either.
    monkeypatch.setattr(ratelimit, "blocked", lambda bucket, rate: None)
    audit_integration()
    secret = new_secret()
    body = {"type": "api.retired", "payload": {"api": "legacy"}}
    assert [post(client, body, secret).status_code for _ in range(4)] == [202, 202, 202, 429]
    assert Event.objects.count() == 3
    assert OutboundEmail.objects.count() == 3  # one each for the Audit integration


@override_settings(API_RATE_LIMIT="3/minute")
def test_token_guessing_from_one_address_is_throttled_even_for_a_right_guess(client):
    secret = new_secret()
    body = {"type": "api.retired", "payload": {"api": "legacy"}}
    guesses = [f"gm_guess{i}" for i in range(3)]
    assert [post(client, body, guess).status_code for guess in guesses] == [401, 401, 401]
    assert post(client, body).status_code == 429  # no token at all counts as a guess too
    # The right token from the same address now gets 429 as well: otherwise the throttle
    # would still tell a guesser which guess was right.
    lucky = post(client, body, secret)
    assert lucky.status_code == 429 and int(lucky["Retry-After"]) >= 1
    assert not Event.objects.exists()
    # Another address is not affected.
    assert post(client, body, secret, REMOTE_ADDR="192.0.2.7").status_code == 202


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"api": ' + "[" * 5_000 + "]" * 5_000 + "}", "is nested 5,001 levels deep"),
        ('{"api": "a", "version": ' + "9" * 5_000 + "}", "contains a number with 5,000 digits"),
    ],
)
def test_the_command_refuses_hostile_json_with_a_message(data, message):
    with pytest.raises(CommandError) as caught:
        call_command("trigger_event", "api.retired", "--data", data)
    assert f"--data {message}" in str(caught.value)
    assert not Event.objects.exists()
