"""The Integrations, API tokens and Events pages: permissions, validation at the field, the
test notification and its delivery status."""

from __future__ import annotations

import pytest
from django.test import Client

import notifications
from notifications.delivery import Courier
from notifications.models import ApiToken, Category, Event, Integration, OutboundEmail
from notifications.tokens import digest
from tests.conftest import make_user
from tests.outbox import point_settings_at
from tests.smtpservers import require_test_host, smtp_server

pytestmark = pytest.mark.django_db

VALID = {
    "name": "Ops",
    "recipients": "ops@example.com, oncall@example.com\nops@example.com",
    "events": ["api.deployed", "gateway.unreachable"],
    "subject_prefix": "[Gateway prod]",
    "enabled": "on",
}


def ops() -> Integration:
    return Integration.objects.create(
        name="Ops", recipients=["ops@example.com"], events=["api.deployed"]
    )


def urls(integration: int, event: int) -> list[str]:
    return [
        "/integrations/",
        "/integrations/new/",
        f"/integrations/{integration}/",
        f"/integrations/{integration}/test/status/",
        "/integrations/tokens/",
        "/events/",
        f"/events/{event}/",
    ]


def test_every_page_needs_sign_in_and_permission(client):
    integration = ops()
    event = notifications.trigger("api.deployed", {"api": "a", "version": "1", "gateway": "g"})
    pages = urls(integration.pk, event.pk)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/"), url
    client.force_login(make_user("nobody"))
    for url in pages:
        assert client.get(url).status_code == 403, url
    i = integration.pk
    for url in [f"/integrations/{i}/", f"/integrations/{i}/enabled/", f"/integrations/{i}/test/"]:
        assert client.post(url).status_code == 403, url
    assert client.post("/integrations/tokens/1/revoke/").status_code == 403
    assert Integration.objects.get().enabled and not Event.objects.filter(source="test")


def test_a_viewer_sees_integrations_but_cannot_change_them(client):
    integration = ops()
    client.force_login(make_user("viewer", "notifications.view_integration"))
    page = client.get("/integrations/").content.decode()
    assert "Ops" in page and "New integration" not in page and "API tokens" not in page
    assert "Disable" not in page
    edit = client.get(f"/integrations/{integration.pk}/").content.decode()
    assert "disabled" in edit.split('name="name"')[1].split(">")[0]
    assert "Send test notification</button>" not in edit
    assert client.post(f"/integrations/{integration.pk}/", VALID).status_code == 403
    assert client.get("/integrations/new/").status_code == 403
    assert client.post(f"/integrations/{integration.pk}/test/").status_code == 403


def test_nav_and_home_show_the_pages_the_user_may_see(client):
    client.force_login(make_user("viewer", "notifications.view_integration"))
    home = client.get("/").content.decode()
    assert 'href="/integrations/"' in home and 'href="/events/"' not in home
    client.force_login(make_user("auditor", "notifications.view_event"))
    home = client.get("/").content.decode()
    assert 'href="/integrations/"' not in home and 'href="/events/"' in home


def test_create_an_integration(admin_client):
    response = admin_client.post("/integrations/new/", VALID)
    integration = Integration.objects.get()
    assert (
        response.status_code == 302 and response["Location"] == f"/integrations/{integration.pk}/"
    )
    assert integration.recipients == ["ops@example.com", "oncall@example.com"]
    assert integration.events == ["api.deployed", "gateway.unreachable"]
    assert integration.subject_prefix == "[Gateway prod]"
    assert integration.enabled and not integration.all_events
    page = admin_client.get(response["Location"]).content.decode()
    assert "Integration Ops created." in page
    assert "ops@example.com\noncall@example.com</textarea>" in page


def test_all_events_clears_the_list_and_edit_saves(admin_client):
    integration = ops()
    response = admin_client.post(
        f"/integrations/{integration.pk}/",
        {**VALID, "all_events": "on", "enabled": ""},
    )
    assert response.status_code == 302
    integration.refresh_from_db()
    assert integration.all_events and integration.events == [] and not integration.enabled


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"recipients": "ops@example.com, not-an-address"},
            "recipients",
            "Not an e-mail address: &#x27;not-an-address&#x27;.",
        ),
        ({"recipients": " , ;"}, "recipients", "Enter at least one e-mail address."),
        ({"recipients": ""}, "recipients", "This field is required."),
        ({"events": []}, "events", "Choose at least one event, or all events."),
        ({"events": ["weather.sunny"]}, "events", "Select a valid choice."),
        ({"events": ["integration.test"]}, "events", "Select a valid choice."),
        (
            {"subject_prefix": "[a]\r\nBcc: x@example.com"},
            "subject_prefix",
            "cannot contain line breaks",
        ),
        ({"name": ""}, "name", "This field is required."),
    ],
)
def test_bad_input_is_reported_at_its_field(admin_client, change, field, message):
    response = admin_client.post("/integrations/new/", {**VALID, **change})
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing was saved" in page
    errors = page.split(f'id="field-{field}"')[1].split("</ul>")[0]
    assert message in errors, errors
    assert not Integration.objects.exists()


def test_too_many_recipients(admin_client):
    many = "\n".join(f"u{i}@example.com" for i in range(1001))
    page = admin_client.post("/integrations/new/", {**VALID, "recipients": many}).content.decode()
    assert "At most 1000 recipients; this list has 1001." in page


def test_a_duplicate_name_is_an_error_at_the_field(admin_client):
    ops()
    page = admin_client.post("/integrations/new/", VALID).content.decode()
    assert "Integration with this Name already exists." in page.split('id="field-name"')[1]


def test_enable_and_disable(admin_client):
    integration = ops()
    admin_client.post(f"/integrations/{integration.pk}/enabled/")
    integration.refresh_from_db()
    assert not integration.enabled
    page = admin_client.get("/integrations/").content.decode()
    assert "Disabled" in page and "gets no notifications" in page
    assert "<td>API deployed</td>" in page
    admin_client.post(f"/integrations/{integration.pk}/enabled/", {"enabled": "on"})
    integration.refresh_from_db()
    assert integration.enabled


def test_forms_need_a_csrf_token(admin_user):
    integration = ops()
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post("/integrations/new/", VALID).status_code == 403
    assert client.post(f"/integrations/{integration.pk}/test/").status_code == 403
    assert client.post("/integrations/tokens/", {"name": "x", "nonce": "n"}).status_code == 403


def test_send_test_notification_goes_through_the_outbox_and_shows_its_status(admin_client):
    require_test_host()
    integration = Integration.objects.create(
        name="Ops",
        recipients=["ops@example.com", "oncall@example.com"],
        events=["api.retired"],
        enabled=False,
    )
    status_url = f"/integrations/{integration.pk}/test/status/"
    assert "No test notification sent yet" in admin_client.get(status_url).content.decode()
    response = admin_client.post(f"/integrations/{integration.pk}/test/", follow=True)
    page = response.content.decode()
    assert "Test notification queued for 2 recipient(s)." in page
    assert f'src="{status_url}"' in page
    email = OutboundEmail.objects.get()
    assert email.category == Category.TEST
    assert Event.objects.get().source == "test"
    waiting = admin_client.get(status_url)
    assert (
        "Queued" in waiting.content.decode() and 'http-equiv="refresh"' in waiting.content.decode()
    )
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        Courier().drain()
    [received] = server.messages
    assert received.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    assert received.message["Subject"] == "Test notification from Ops"
    done = admin_client.get(status_url).content.decode()
    assert "Sent" in done and "refresh" not in done
    assert f'href="/outbox/{email.pk}/"' in done


def test_a_failed_test_notification_shows_the_reason(admin_client, settings):
    require_test_host()
    from tests.smtpservers import Recorder

    integration = ops()
    admin_client.post(f"/integrations/{integration.pk}/test/")
    recorder = Recorder(refuse_recipients={"ops@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        Courier().drain()
    page = admin_client.get(f"/integrations/{integration.pk}/test/status/").content.decode()
    assert "Failed" in page and "550 5.1.1 No such user" in page


def test_tokens_are_shown_once_and_stored_hashed(admin_client):
    form = admin_client.get("/integrations/tokens/").content.decode()
    nonce = form.split('name="nonce" value="')[1].split('"')[0]
    response = admin_client.post("/integrations/tokens/", {"name": "CI pipeline", "nonce": nonce})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    secret = page.split('id="token-secret">')[1].split("<")[0]
    assert secret.startswith("gm_") and len(secret) > 40
    token = ApiToken.objects.get()
    assert token.hash == digest(secret) and secret not in (token.prefix, token.name)
    assert token.prefix == secret[:10] and token.created_by.username == "alice"
    again = admin_client.get("/integrations/tokens/").content.decode()
    assert secret not in again and f"{token.prefix}…" in again
    assert (
        "This field is required." in admin_client.post("/integrations/tokens/", {}).content.decode()
    )
    # The same form sent again (a reload) makes no second token and shows no secret.
    again = admin_client.post(
        "/integrations/tokens/", {"name": "CI pipeline", "nonce": nonce}, follow=True
    ).content.decode()
    assert "already created its token" in again and secret not in again
    assert ApiToken.objects.count() == 1

    api = Client()
    body = {"type": "api.retired", "payload": {"api": "legacy"}}
    headers = {"Authorization": f"Bearer {secret}"}
    assert api.post("/api/v1/events", body, "application/json", headers=headers).status_code == 202
    revoked = admin_client.post(f"/integrations/tokens/{token.pk}/revoke/", follow=True)
    assert "revoked: requests with it now get 401" in revoked.content.decode()
    assert api.post("/api/v1/events", body, "application/json", headers=headers).status_code == 401
    assert "Revoked" in admin_client.get("/integrations/tokens/").content.decode()


def test_tokens_need_their_own_permission(client):
    client.force_login(
        make_user("editor", "notifications.view_integration", "notifications.change_integration")
    )
    assert client.get("/integrations/tokens/").status_code == 403
    client.force_login(make_user("keeper", "notifications.manage_apitoken"))
    assert client.get("/integrations/tokens/").status_code == 200


def test_events_page_lists_events_and_the_detail_shows_payload_integrations_and_mail(
    admin_client,
):
    integration = ops()
    event = notifications.trigger(
        "api.deployed", {"api": "<i>orders</i>", "version": "2", "gateway": "gw"}, actor="bob"
    )
    notifications.trigger("api.retired", {"api": "legacy"})
    page = admin_client.get("/events/").content.decode()
    assert "api.deployed" in page and "api.retired" in page and "Product · bob" in page
    filtered = admin_client.get("/events/", {"type": "api.retired"}).content.decode()
    assert "api.deployed</td>" not in filtered
    detail = admin_client.get(f"/events/{event.pk}/").content.decode()
    assert "&lt;i&gt;orders&lt;/i&gt;" in detail and "<i>orders</i>" not in detail
    assert f'href="/integrations/{integration.pk}/"' in detail
    email = OutboundEmail.objects.get()
    assert f'href="/outbox/{email.pk}/"' in detail and "Queued" in detail
    assert "not given" in detail  # environment, optional
    assert admin_client.get(f"/events/{event.pk + 100_000}/").status_code == 404


def test_an_event_of_a_type_no_longer_in_the_catalog_still_shows_its_payload(admin_client):
    event = Event.objects.create(type="legacy.thing", payload={"note": "<b>old</b>"}, source="api")
    page = admin_client.get(f"/events/{event.pk}/").content.decode()
    assert "legacy.thing" in page and "<dt>note</dt><dd>&lt;b&gt;old&lt;/b&gt;</dd>" in page
