"""Events through each entry point (Python, HTTP, command, the product's own settings save),
delivered by the outbox's courier to a real SMTP server that records what it received."""

from __future__ import annotations

import io
import json
from email.message import Message

import pytest
from django.core.management import CommandError, call_command
from django.db import transaction

import notifications
from notifications.delivery import Courier
from notifications.events import InvalidEvent
from notifications.models import ApiToken, Category, Dispatch, Event, Integration, OutboundEmail
from notifications.tokens import create, revoke
from tests.conftest import make_user
from tests.outbox import point_settings_at
from tests.smtpservers import Received, require_test_host, smtp_server

pytestmark = pytest.mark.django_db
URL = "/api/v1/events"
DEPLOYED = {"api": "orders", "version": "2.1.0", "gateway": "gw-eu-1", "environment": "prod"}


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


@pytest.fixture
def server():
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        yield server


def integration(name="Ops", recipients=("ops@example.com", "oncall@example.com"), **fields):
    fields.setdefault("events", ["api.deployed"])
    return Integration.objects.create(name=name, recipients=list(recipients), **fields)


def parts(received: Received) -> tuple[Message, str, str]:
    """The message, its text part and its HTML part."""
    message = received.message
    text, html = (part.get_payload(decode=True).decode() for part in message.get_payload())
    return message, text, html


def headers_of(received: Received) -> str:
    return received.data.split(b"\r\n\r\n", 1)[0].decode()


# --- the Python API, as the product calls it ---


def test_python_trigger_sends_one_message_per_integration_to_its_recipients(server):
    ops = integration(subject_prefix="[Gateway prod]")
    everyone = integration("Everyone", ["all@example.com"], all_events=True, events=[])
    integration("Other events", ["other@example.com"], events=["api.retired"])
    event = notifications.trigger("api.deployed", DEPLOYED, actor="deploy-bot")
    assert Courier().drain() == 2
    assert event.source == "product" and event.actor == "deploy-bot"
    assert {d.integration for d in event.dispatches.all()} == {ops, everyone}
    by_recipients = {tuple(sorted(m.rcpt_tos)): m for m in server.messages}
    assert set(by_recipients) == {("oncall@example.com", "ops@example.com"), ("all@example.com",)}
    message, text, html = parts(by_recipients[("oncall@example.com", "ops@example.com")])
    assert message["Subject"] == "[Gateway prod] API orders 2.1.0 deployed to gw-eu-1"
    assert message["From"] == "gateway@example.com"
    assert message["To"] == "undisclosed-recipients:;"
    assert message.get_content_type() == "multipart/alternative"
    assert "API orders 2.1.0 was deployed to the gateway gw-eu-1 (prod)." in text
    assert f"/events/{event.pk}/" in text
    assert "<strong>orders 2.1.0</strong>" in html
    assert "ops@example.com" not in headers_of(
        by_recipients[("oncall@example.com", "ops@example.com")]
    )
    email = OutboundEmail.objects.get(dispatches__integration=ops)
    assert email.category == Category.NOTIFICATION and email.cause == event


def test_a_disabled_integration_gets_nothing(server):
    integration("Off", ["off@example.com"], enabled=False, all_events=True)
    on = integration("On", ["on@example.com"])
    event = notifications.trigger("api.deployed", DEPLOYED)
    Courier().drain()
    assert [m.rcpt_tos for m in server.messages] == [["on@example.com"]]
    assert [d.integration for d in event.dispatches.all()] == [on]


def test_an_event_no_integration_wants_is_still_recorded():
    event = notifications.trigger("api.retired", {"api": "legacy"})
    assert Event.objects.get() == event and event.payload == {"api": "legacy"}
    assert not OutboundEmail.objects.exists()


def test_invalid_events_raise_with_field_errors_and_leave_no_trace():
    integration(all_events=True, events=[])
    with pytest.raises(InvalidEvent) as caught:
        notifications.trigger("user.invited", {"email": "carol@example.com", "expires_at": "soon"})
    assert set(caught.value.errors) == {"invited_by", "expires_at"}
    with pytest.raises(InvalidEvent, match="Unknown event type"):
        notifications.trigger("user.invite", {})
    assert not Event.objects.exists() and not OutboundEmail.objects.exists()


def test_the_event_and_its_mail_roll_back_with_the_callers_transaction():
    integration(all_events=True, events=[])
    with pytest.raises(RuntimeError), transaction.atomic():
        notifications.trigger(
            "user.joined", {"username": "carol", "email": "carol@example.com"}, actor="x"
        )
        raise RuntimeError("the invitation failed after all")
    assert not Event.objects.exists() and not OutboundEmail.objects.exists()


def test_html_in_a_payload_is_escaped_in_the_html_part_and_cannot_break_the_subject(server):
    integration(all_events=True, events=[])
    notifications.trigger(
        "api.deployment_failed",
        {
            "api": "<script>alert(1)</script>",
            "version": '1.0"><img src=x onerror=alert(2)>',
            "gateway": "gw\r\nBcc: victim@example.com",
            "error": "<b>boom</b> & more",
        },
    )
    Courier().drain()
    [received] = server.messages
    message, text, html = parts(received)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b&gt;boom&lt;/b&gt; &amp; more" in html
    assert "<script>alert(1)</script>" in text  # the text part is text: nothing to escape
    # A long header is folded (CRLF and a space), which a reader unfolds: one header still.
    subject = "".join(str(message["Subject"]).split("\r\n"))
    subject = " ".join(subject.split("\n "))
    assert subject == (
        'Deployment of API <script>alert(1)</script> 1.0"><img src=x onerror=alert(2)> '
        "to gw Bcc: victim@example.com failed"
    )
    assert message["Bcc"] is None
    assert not [line for line in headers_of(received).splitlines() if line.startswith("Bcc")]
    assert received.rcpt_tos == ["ops@example.com", "oncall@example.com"]


def test_500_recipients_get_one_smtp_transaction_and_see_no_addresses(server):
    recipients = [f"user{i:03}@example.com" for i in range(500)]
    integration("Everyone", recipients, all_events=True, events=[])
    notifications.trigger("gateway.unreachable", {"gateway": "gw-1", "since": "2026-11-25T09:00"})
    assert OutboundEmail.objects.count() == 1
    assert Courier().drain() == 1
    [received] = server.messages
    assert sorted(received.rcpt_tos) == recipients
    assert server.recorder.connections == 1
    headers = headers_of(received)
    assert "@example.com" not in headers.replace("gateway@example.com", "")
    assert "user000" not in received.data.decode()
    assert OutboundEmail.objects.get().status == "sent"


# --- HTTP: POST /api/v1/events ---


@pytest.fixture
def secret(db) -> str:
    return create("CI pipeline", make_user("tokenmaker"))[1]


def post(client, body, secret: str | None = None, **kwargs):
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(URL, data=data, content_type="application/json", headers=headers, **kwargs)


def test_api_accepts_a_valid_event_and_the_mail_arrives(client, server, secret):
    integration()
    response = post(client, {"type": "api.deployed", "payload": DEPLOYED}, secret)
    assert response.status_code == 202, response.content
    body = response.json()
    event = Event.objects.get()
    assert body == {"id": event.pk, "type": "api.deployed", "integrations": 1, "messages": 1}
    assert event.source == "api" and event.actor.startswith("CI pipeline (gm_")
    assert ApiToken.objects.get().last_used_at is not None
    Courier().drain()
    [received] = server.messages
    assert received.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    assert received.message["Subject"] == "API orders 2.1.0 deployed to gw-eu-1"


def test_api_needs_a_known_active_token(client, secret):
    integration()
    body = {"type": "api.deployed", "payload": DEPLOYED}
    missing = post(client, body)
    assert missing.status_code == 401
    assert missing["WWW-Authenticate"] == 'Bearer realm="events"'
    assert "Authorization: Bearer" in missing.json()["errors"]["token"][0]
    wrong = post(client, body, secret[:-2] + "xx")
    assert wrong.status_code == 401
    assert wrong.json() == {"errors": {"token": ["The token is unknown or revoked."]}}
    basic = client.post(
        URL, "{}", content_type="application/json", headers={"Authorization": "Basic eA=="}
    )
    assert basic.status_code == 401
    assert post(client, body, secret).status_code == 202
    revoke(ApiToken.objects.get())
    revoked = post(client, body, secret)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["errors"]["token"][0]
    assert Event.objects.count() == 1


def test_api_refuses_an_unknown_type_with_a_suggestion(client, secret):
    response = post(client, {"type": "api.deploy", "payload": DEPLOYED}, secret)
    assert response.status_code == 400
    assert response.json() == {
        "errors": {"type": ["Unknown event type 'api.deploy'. Did you mean 'api.deployed'?"]}
    }
    response = post(client, {"type": "integration.test", "payload": {"integration": "x"}}, secret)
    assert response.status_code == 400 and "type" in response.json()["errors"]


def test_api_refuses_a_bad_payload_with_field_errors(client, secret):
    response = post(
        client,
        {"type": "certificate.expiring", "payload": {"subject": "CN=x", "days_left": "9", "gw": 1}},
        secret,
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors["gateway"] == ["This field is required."]
    assert errors["expires_at"] == ["This field is required."]
    assert errors["days_left"] == ["Expected an integer, got a string."]
    assert errors["gw"][0].startswith("Unknown field for certificate.expiring.")
    assert not Event.objects.exists()


def test_api_refuses_a_1_mb_body_without_reading_it(client, secret):
    body = json.dumps({"type": "api.deployed", "payload": {**DEPLOYED, "api": "x" * 1_000_000}})
    response = post(client, body, secret)
    assert response.status_code == 400
    assert response.json() == {
        "errors": {"body": ["The request body is larger than 65,536 bytes."]}
    }
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ("{not json", "body", "The body is not valid JSON"),
        (b"\xff\xfe", "body", "The body is not valid JSON"),
        ("[1, 2]", "body", "Expected a JSON object"),
        ('{"type": "api.retired", "payload": {"api": "a"}, "extra": 1}', "extra", "Unknown key"),
        ('{"type": "api.retired", "payload": "a"}', "payload", "Expected a JSON object"),
        ('{"payload": {}}', "type", "An event type is required"),
    ],
)
def test_api_refuses_malformed_bodies_clearly(client, secret, body, key, message):
    response = post(client, body, secret)
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert response.json()["errors"][key][0].startswith(message)


def test_api_takes_only_post_and_needs_no_csrf_token(secret):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    get = client.get(URL)
    assert get.status_code == 405 and get["Allow"] == "POST"
    assert post(client, {"type": "api.retired", "payload": {"api": "a"}}, secret).status_code == 202


# --- the command ---


def test_command_triggers_and_the_mail_arrives(server):
    integration("Certificates", ["pki@example.com"], events=["certificate.expiring"])
    out = io.StringIO()
    call_command(
        "trigger_event",
        "certificate.expiring",
        "--data",
        json.dumps(
            {
                "subject": "CN=api.example.com",
                "gateway": "gw-eu-1",
                "expires_at": "2026-12-24T00:00:00+00:00",
                "days_left": 29,
            }
        ),
        stdout=out,
    )
    event = Event.objects.get()
    assert event.source == "command"
    assert out.getvalue().strip() == (
        f"Event {event.pk} (certificate.expiring) recorded: 1 integration(s) matched, "
        "1 message(s) queued."
    )
    Courier().drain()
    [received] = server.messages
    assert received.rcpt_tos == ["pki@example.com"]
    _, text, _ = parts(received)
    assert (
        received.message["Subject"]
        == "Certificate CN=api.example.com on gw-eu-1 expires in 29 days"
    )
    assert "expires in 29 days. Renew it before then." in text


def test_command_reports_each_bad_field_and_exits_non_zero():
    with pytest.raises(CommandError) as caught:
        call_command(
            "trigger_event",
            "subscription.requested",
            "--data",
            '{"api": 5, "application": "a", "requestedby": "x"}',
        )
    text = str(caught.value)
    assert "Nothing was triggered" in text
    assert "api: Expected a string, got a number." in text
    assert "requested_by: This field is required." in text
    assert (
        "requestedby: Unknown field for subscription.requested. Did you mean 'requested_by'?"
        in text
    )
    with pytest.raises(CommandError, match=r"Did you mean 'api\.retired'"):
        call_command("trigger_event", "api.retire", "--data", "{}")
    with pytest.raises(CommandError, match="--data is not valid JSON"):
        call_command("trigger_event", "api.retired", "--data", "{api}")
    assert not Event.objects.exists()


def test_command_lists_the_catalog():
    out = io.StringIO()
    call_command("trigger_event", "--list", stdout=out)
    text = out.getvalue()
    assert "user.invited  User invited" in text
    assert "expires_at (ISO 8601 date and time, required)" in text
    assert "integration.test" not in text


# --- the product itself: saving the SMTP settings ---


def test_saving_smtp_settings_notifies_with_field_names_and_never_the_password(server, monkeypatch):
    integration("Admins", ["admins@example.com"], events=["smtp.settings_changed"])
    monkeypatch.setattr("sys.stdin", io.StringIO("hunter2-very-secret\n"))
    call_command(
        "smtp_settings",
        "set",
        "--sender-name=Gateway Ops",
        "--password-stdin",
        stdout=io.StringIO(),
    )
    event = Event.objects.get(type="smtp.settings_changed")
    assert event.payload["fields"] == ["Sender name", "Password"]
    assert event.payload["changed_by"].endswith("(command line)")
    assert event.source == "product"
    Courier().drain()
    [received] = server.messages
    assert received.rcpt_tos == ["admins@example.com"]
    _, text, html = parts(received)
    assert "the SMTP settings: Sender name, Password." in html
    assert "the SMTP settings: Sender name, Password." in text
    assert "hunter2" not in received.data.decode()
    assert "hunter2" not in json.dumps(event.payload)
    assert Dispatch.objects.get().integration_name == "Admins"
