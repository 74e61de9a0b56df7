"""StoredSettingsBackend: Django's e-mail API, sending with the stored settings."""

import pytest
from django.core import mail
from django.core.mail import EmailMessage, get_connection
from django.db import connection
from django.test.utils import CaptureQueriesContext

from smtpsettings import store
from smtpsettings.problems import SmtpProblem
from tests.smtpservers import PASSWORD, USERNAME, certificates, require_test_host, smtp_server

BACKEND = "smtpsettings.backends.StoredSettingsBackend"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def configure(server, *, user="", password="", trusted="", options=None, encryption="auto"):
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.sender_name = "Gateway Manager"
    record.host, record.port, record.encryption = server.host, server.port, encryption
    record.username = user
    record.options = options if options is not None else {"timeout": 5}
    record.trusted_certificate = trusted
    if password:
        record.seal_password(password)
    record.save()
    return record


def test_send_mail_uses_the_stored_settings_and_sender():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        configure(server, user=USERNAME, password=PASSWORD, trusted=certs.ca_pem)
        sent = mail.send_mail(
            "Hello", "Body text", None, ["bob@example.com"], connection=get_connection(BACKEND)
        )
    assert sent == 1
    (received,) = server.messages
    assert received.mail_from == "gateway@example.com"
    assert received.message["From"] == "Gateway Manager <gateway@example.com>"
    assert received.message["Subject"] == "Hello"
    assert server.recorder.logins == [f"PLAIN {USERNAME}"]


def test_explicit_from_is_kept_and_the_callers_message_is_not_changed():
    with smtp_server() as server:
        configure(server, options={"auto_tls": False})
        message = EmailMessage("S", "B", "Other <other@example.com>", ["bob@example.com"])
        get_connection(BACKEND).send_messages([message])
        default = EmailMessage("S", "B", None, ["bob@example.com"])
        get_connection(BACKEND).send_messages([default])
    assert [m.mail_from for m in server.messages] == ["other@example.com", "gateway@example.com"]
    assert default.from_email == "gateway-manager@localhost"


def test_settings_are_read_once_per_connection_not_per_message():
    with smtp_server() as server:
        configure(server, options={"auto_tls": False})
        backend = get_connection(BACKEND)
        backend.open()
        messages = [EmailMessage("S", "B", None, [f"u{i}@example.com"]) for i in range(20)]
        with CaptureQueriesContext(connection) as queries:
            assert backend.send_messages(messages) == 20
        backend.close()
    assert len(queries) == 0
    assert server.recorder.connections == 1 and len(server.messages) == 20


def test_send_messages_opens_and_closes_its_own_connection():
    with smtp_server() as server:
        configure(server, options={"auto_tls": False})
        backend = get_connection(BACKEND)
        backend.send_messages([EmailMessage("S", "B", None, ["a@example.com"])])
        assert backend.transport is None
        backend.send_messages([EmailMessage("S", "B", None, ["b@example.com"])])
    assert server.recorder.connections == 2


def test_failures_raise_an_explained_problem_or_pass_silently():
    with smtp_server() as server:
        configure(server)  # STARTTLS required, but this server offers none
        with pytest.raises(SmtpProblem, match="does not offer STARTTLS"):
            mail.send_mail("S", "B", None, ["a@example.com"], connection=get_connection(BACKEND))
        quiet = get_connection(BACKEND, fail_silently=True)
        assert mail.send_mail("S", "B", None, ["a@example.com"], connection=quiet) == 0
    assert server.messages == []


def test_no_server_configured_is_explained():
    with pytest.raises(SmtpProblem, match="No SMTP server is configured"):
        mail.send_mail("S", "B", None, ["a@example.com"], connection=get_connection(BACKEND))


def test_a_connection_that_failed_half_way_is_never_reused():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        record = configure(server, user=USERNAME, password="wrong", trusted=certs.ca_pem)
        backend = get_connection(BACKEND)
        with pytest.raises(SmtpProblem, match="refused the user name or password"):
            backend.open()
        assert backend.transport is None
        record.seal_password(PASSWORD)
        record.save()
        assert backend.open() is True  # a new connection, with the settings read again
        backend.send_messages([EmailMessage("S", "B", None, ["a@example.com"])])
        backend.close()
    assert server.recorder.connections == 2
    assert len(server.messages) == 1


def test_message_with_no_recipients_is_not_sent():
    with smtp_server() as server:
        configure(server, options={"auto_tls": False})
        assert get_connection(BACKEND).send_messages([EmailMessage("S", "B", None, [])]) == 0
    assert server.messages == []


@pytest.mark.parametrize(
    "address",
    [
        "user@example.com",
        "A.b+c@Sub.Example.COM",
        "o'brien@example.com",
        "x@[127.0.0.1]",
        '"q"@e.com',
        "Name <a@b.com>",
        '"Doe, Jane" <jane@example.com>',
        "a@bücher.de",
    ],
)
def test_envelope_addresses_match_what_djangos_backend_sends(address):
    from email.utils import parseaddr

    from django.core.mail.message import sanitize_address

    from smtpsettings.backends import envelope_address

    assert envelope_address(address, "utf-8") == parseaddr(sanitize_address(address, "utf-8"))[1]
