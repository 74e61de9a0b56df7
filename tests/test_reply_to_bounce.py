"""Reply-To and the bounce address (issue 13): two optional settings fields, validated like the
sender, on the page, in `smtp_settings set/show` and in the change history; Reply-To goes on
every message the product sends, and the bounce address is its envelope sender (MAIL FROM)."""

from __future__ import annotations

import io
import json

import pytest
from django.core import mail
from django.core.mail import EmailMessage, get_connection
from django.core.management import CommandError, call_command

from notifications.delivery import Courier
from notifications.models import OutboundEmail
from smtpsettings import store
from smtpsettings.models import SmtpSettings, SmtpSettingsChange
from tests.smtpservers import require_test_host, smtp_server

URL = "/settings/smtp/"
PAGE = {
    "sender_email": "gateway@example.com",
    "sender_name": "Gateway Manager",
    "host": "smtp.example.com",
    "port": "587",
    "encryption": "auto",
    "username": "",
    "password": "",
    "options": "",
    "trusted_certificate": "",
}
pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("smtp_settings", *args, stdout=out)
    return out.getvalue()


def configure(server, *, reply_to: str = "", bounce: str = "") -> None:
    record = store.load()
    record.sender_email, record.sender_name = "gateway@example.com", "Gateway Manager"
    record.host, record.port = server.host, server.port
    record.options = {"timeout": 5, "auto_tls": False}
    record.reply_to, record.bounce_address = reply_to, bounce
    record.save()


# -- the fields ---------------------------------------------------------------------------


def test_set_and_show_on_the_command_line_with_history():
    run("set", "--sender=gateway@example.com", "--host=smtp.example.com")
    out = run("set", "--reply-to=support@example.com", "--bounce-address=bounces@example.com")
    assert "Reply-To address: (blank) -> support@example.com" in out
    assert "Bounce address: (blank) -> bounces@example.com" in out
    record = store.load()
    assert (record.reply_to, record.bounce_address) == (
        "support@example.com",
        "bounces@example.com",
    )
    shown = run("show")
    assert "Reply-To:" in shown and "support@example.com" in shown
    assert "Bounce:" in shown and "bounces@example.com" in shown
    report = json.loads(run("show", "--json"))
    assert report["reply_to"] == "support@example.com"
    assert report["bounce_address"] == "bounces@example.com"
    entry = SmtpSettingsChange.objects.first()
    assert {c["label"]: c["new"] for c in entry.changes} == {
        "Reply-To address": "support@example.com",
        "Bounce address": "bounces@example.com",
    }
    assert entry.source == "command line"
    run("set", "--reply-to=", "--bounce-address=")  # '' removes them
    assert (store.load().reply_to, store.load().bounce_address) == ("", "")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--reply-to", "support"),
        ("--bounce-address", "bounces@"),
        ("--reply-to", "a@example.com, b@example.com"),
        ("--bounce-address", "Bounces <bounces@example.com>"),
        ("--reply-to", "support@example.com\r\nBcc: victim@example.com"),
    ],
)
def test_a_bad_address_is_refused_at_its_flag_like_the_sender(flag, value):
    run("set", "--sender=gateway@example.com", "--host=smtp.example.com")
    before = SmtpSettings.objects.values().get()
    with pytest.raises(CommandError) as caught:
        run("set", f"{flag}={value}")
    assert f"{flag}: Enter a complete e-mail address, such as" in str(caught.value)
    assert "Nothing was saved." in str(caught.value)
    assert SmtpSettings.objects.values().get() == before


def test_the_page_shows_saves_and_records_both_fields(admin_client):
    page = admin_client.get(URL).content.decode()
    assert 'name="reply_to"' in page and 'name="bounce_address"' in page
    assert "where servers return undeliverable mail" in page  # the help text, at the field
    response = admin_client.post(
        URL, {**PAGE, "reply_to": "support@example.com", "bounce_address": "bounces@example.com"}
    )
    assert response.status_code == 302
    record = store.load()
    assert (record.reply_to, record.bounce_address) == (
        "support@example.com",
        "bounces@example.com",
    )
    page = admin_client.get(URL).content.decode()
    assert 'value="support@example.com"' in page and 'value="bounces@example.com"' in page
    assert "Replies go to <strong>support@example.com</strong>" in page
    assert "bounces go to <strong>bounces@example.com</strong>" in page
    labels = {c["label"] for c in SmtpSettingsChange.objects.get().changes}
    assert {"Reply-To address", "Bounce address"} <= labels
    assert "Reply-To address</span>: (blank) → support@example.com" in page


@pytest.mark.parametrize("field", ["reply_to", "bounce_address"])
def test_a_bad_address_on_the_page_gets_a_message_at_its_field(admin_client, field):
    admin_client.post(URL, PAGE)
    before = SmtpSettings.objects.values().get()
    response = admin_client.post(URL, {**PAGE, field: "not an address"})
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors[field])
    assert "Enter a complete e-mail address, such as" in errors
    html = response.content.decode()
    assert f'id="field-{field}"' in html and "Nothing was saved" in html
    assert SmtpSettings.objects.values().get() == before


def test_international_domains_are_accepted_and_sent_in_punycode():
    require_test_host()
    with smtp_server() as server:
        configure(server, reply_to="hilfe@bücher.example", bounce="bounce@bücher.example")
        get_connection("smtpsettings.backends.StoredSettingsBackend").send_messages(
            [EmailMessage("S", "B", None, ["bob@example.com"])]
        )
    (received,) = server.messages
    assert received.mail_from == "bounce@xn--bcher-kva.example"
    assert received.message["Reply-To"] == "hilfe@xn--bcher-kva.example"


# -- what goes out ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _outbox(settings):
    settings.EMAIL_BACKEND = "notifications.backends.OutboxBackend"  # as in production


@pytest.fixture
def server():
    require_test_host()
    with smtp_server() as server:
        configure(server, reply_to="support@example.com", bounce="bounces@example.com")
        yield server


def test_mail_through_the_outbox_carries_reply_to_and_the_bounce_address(server):
    mail.send_mail("Welcome", "Hello", None, ["bob@example.com"])  # EMAIL_BACKEND: the outbox
    assert OutboundEmail.objects.get().envelope_from == "bounces@example.com"
    Courier().drain()
    (received,) = server.messages
    assert received.mail_from == "bounces@example.com"
    assert received.message["From"] == "Gateway Manager <gateway@example.com>"
    assert received.message["Reply-To"] == "support@example.com"


def test_an_invitation_carries_reply_to_and_the_bounce_address(server, admin_client):
    admin_client.post("/users/", {"addresses": "carol@example.com", "valid_days": "7"})
    Courier().drain()
    (received,) = server.messages
    assert received.rcpt_tos == ["carol@example.com"]
    assert received.mail_from == "bounces@example.com"
    assert received.message["Reply-To"] == "support@example.com"


def test_the_stored_settings_backend_sets_both(server):
    backend = get_connection("smtpsettings.backends.StoredSettingsBackend")
    backend.send_messages([EmailMessage("S", "B", None, ["bob@example.com"])])
    (received,) = server.messages
    assert received.mail_from == "bounces@example.com"
    assert received.message["From"] == "Gateway Manager <gateway@example.com>"
    assert received.message["Reply-To"] == "support@example.com"


def test_the_test_email_is_addressed_like_real_mail(server):
    out = run("test", "--to=bob@example.com")
    assert "Delivered" in out
    (received,) = server.messages
    assert received.mail_from == "bounces@example.com"
    assert received.message["Reply-To"] == "support@example.com"
    assert received.message["From"] == "Gateway Manager <gateway@example.com>"


def test_a_messages_own_reply_to_is_kept_and_the_callers_message_unchanged(server):
    own = EmailMessage("S", "B", None, ["bob@example.com"], reply_to=["alice@example.com"])
    header = EmailMessage(
        "S", "B", None, ["bob@example.com"], headers={"Reply-To": "x@example.com"}
    )
    plain = EmailMessage("S", "B", None, ["bob@example.com"])
    get_connection("smtpsettings.backends.StoredSettingsBackend").send_messages(
        [own, header, plain]
    )
    assert [m.message["Reply-To"] for m in server.messages] == [
        "alice@example.com",
        "x@example.com",
        "support@example.com",
    ]
    assert plain.reply_to == [] and plain.from_email == "gateway-manager@localhost"


def test_without_them_mail_from_is_the_sender_and_there_is_no_reply_to():
    require_test_host()
    with smtp_server() as server:
        configure(server)
        mail.send_mail("Welcome", "Hello", None, ["bob@example.com"])
        Courier().drain()
    (received,) = server.messages
    assert received.mail_from == "gateway@example.com"
    assert received.message["Reply-To"] is None
