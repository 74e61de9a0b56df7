"""Django's e-mail backend contract, kept by both of our backends.

The classes BaseEmailBackendTests, SMTPBackendTests and SMTPBackendStoppedServerTests of
Django 5.2's own mail tests (tests/mail/tests.py in Django's source, BSD licence; ported from
5.2.19) run here against StoredSettingsBackend, with its settings read from the database and a
real aiosmtpd server, and, where they concern what is stored rather than a connection, against
the outbox backend, whose "mailbox" is the stored message. Tests about EMAIL_* settings
(EMAIL_USE_TLS, EMAIL_HOST_USER, EMAIL_TIMEOUT...) have no counterpart: those settings come from
the database here and are covered in test_plan.py and test_backend.py.

Then the places where our backends broke Django's contract (issue 13): lazy addresses (ticket
24416), IDN domains in the test e-mail, and failures that are also smtplib's exceptions.
"""

from __future__ import annotations

import smtplib
from email import message_from_bytes as _message_from_bytes
from email import policy

import pytest
from django.core import mail
from django.core.mail import EmailMessage, get_connection, mail_admins, mail_managers, send_mail
from django.core.management import call_command
from django.utils.translation import gettext_lazy

from notifications.models import OutboundEmail
from smtpsettings import store
from smtpsettings.problems import SmtpProblem
from tests.smtpservers import (
    PASSWORD,
    TEST_HOST,
    USERNAME,
    Recorder,
    RecordingController,
    free_port,
    require_test_host,
    smtp_server,
)

SMTP_BACKEND = "smtpsettings.backends.StoredSettingsBackend"
OUTBOX_BACKEND = "notifications.backends.OutboxBackend"
pytestmark = pytest.mark.django_db


def message_from_bytes(data: bytes):
    """Like Django's tests: the modern policy, so headers read back decoded."""
    return _message_from_bytes(data, policy=policy.default)


def configure(server, *, user: str = "", password: str = "", **fields) -> None:
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port = server.host, server.port
    record.username = user
    # The test server's name is not loopback by its spelling: plain SMTP needs auto_tls off.
    record.options = {"timeout": 5, "auto_tls": False}
    for name, value in fields.items():
        setattr(record, name, value)
    if password:
        record.seal_password(password)
    record.save()


class Mailbox:
    """What a backend delivered: through SMTP, what the server received; through the outbox,
    what it stored (envelope and message) for the worker to send."""

    def __init__(self, kind: str, server=None) -> None:
        self.kind, self.server, self._seen = kind, server, 0

    def _all(self) -> list[tuple[str, list[str], bytes]]:
        if self.kind == "smtp":
            return [(m.mail_from, m.rcpt_tos, m.data) for m in self.server.messages]
        return [
            (row.envelope_from, [r["address"] for r in row.recipients], row.message_bytes())
            for row in OutboundEmail.objects.order_by("id")
        ]

    def messages(self):
        return [message_from_bytes(data) for _, _, data in self._all()[self._seen :]]

    def envelopes(self) -> list[dict]:
        return [{"mail_from": f, "rcpt_tos": r} for f, r, _ in self._all()[self._seen :]]

    def flush(self) -> None:
        self._seen = len(self._all())

    def the_message(self):
        messages = self.messages()
        assert len(messages) == 1, [m.as_string() for m in messages]
        return messages[0]


@pytest.fixture(params=["smtp", "outbox"])
def mailbox(request, settings):
    """Django's BaseEmailBackendTests ran once per backend; so do these."""
    require_test_host()
    with smtp_server() as server:
        configure(server)
        if request.param == "smtp":
            settings.EMAIL_BACKEND = SMTP_BACKEND
        else:
            settings.EMAIL_BACKEND = OUTBOX_BACKEND
        box = Mailbox(request.param, server)
        yield box
        if request.param == "smtp":  # Django's SMTPHandler: MAIL FROM is the From address
            for mail_from, _, data in box._all():
                header = message_from_bytes(data)["from"]
                assert header is None or mail_from == header.addresses[0].addr_spec


@pytest.fixture
def smtp_mailbox(settings):
    require_test_host()
    with smtp_server() as server:
        configure(server)
        settings.EMAIL_BACKEND = SMTP_BACKEND
        yield Mailbox("smtp", server)


# -- BaseEmailBackendTests ----------------------------------------------------------------


def test_send(mailbox):
    email = EmailMessage("Subject", "Content", "from@example.com", ["to@example.com"])
    assert mail.get_connection().send_messages([email]) == 1
    message = mailbox.the_message()
    assert message["subject"] == "Subject"
    assert message.get_content().rstrip() == "Content"
    assert message["from"] == "from@example.com"
    assert message.get_all("to") == ["to@example.com"]


def test_send_unicode(mailbox):
    email = EmailMessage(
        "Chère maman", "Je t'aime très fort", "from@example.com", ["to@example.com"]
    )
    assert mail.get_connection().send_messages([email]) == 1
    message = mailbox.the_message()
    assert message["subject"] == "Chère maman"
    assert b"Subject: =?utf-8?q?Ch=C3=A8re_maman?=" in message.as_bytes()
    assert message.get_content().rstrip() == "Je t'aime très fort"


def test_send_long_lines(mailbox):
    """RFC 5322 limits a line to 998 characters: a longer body goes quoted-printable."""
    body = "В южных морях " * 60  # noqa: RUF001 (Russian, as in Django's test)
    EmailMessage("Subject", body, "from@example.com", ["to@example.com"]).send()
    message = mailbox.the_message()
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_content_type() == "text/plain"


def test_send_many(mailbox):
    email1 = EmailMessage(to=["to-1@example.com"])
    email2 = EmailMessage(to=["to-2@example.com"])
    # send_messages() may take a list or an iterator.
    for emails in ([email1, email2], iter((email1, email2))):
        assert mail.get_connection().send_messages(emails) == 2
        messages = mailbox.messages()
        assert [m["To"] for m in messages] == ["to-1@example.com", "to-2@example.com"]
        mailbox.flush()


def test_send_verbose_name(mailbox):
    EmailMessage(from_email='"Firstname Sürname" <from@example.com>', to=["to@example.com"]).send()
    message = mailbox.the_message()
    assert message["from"] == "Firstname Sürname <from@example.com>"
    assert b"From: =?utf-8?q?Firstname_S=C3=BCrname?= <from@example.com>" in message.as_bytes()


def test_plaintext_send_mail(mailbox):
    send_mail("Subject", "Content", "sender@example.com", ["nobody@example.com"])
    message = mailbox.the_message()
    assert message.get("subject") == "Subject"
    assert message.get_all("to") == ["nobody@example.com"]
    assert not message.is_multipart()
    assert message.get_content_type() == "text/plain"


def test_html_send_mail(mailbox):
    send_mail(
        "Subject", "Content", "sender@example.com", ["nobody@example.com"], html_message="HTML"
    )
    message = mailbox.the_message()
    assert message.is_multipart()
    parts = message.get_payload()
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert [p.get_content().rstrip() for p in parts] == ["Content", "HTML"]


def test_html_mail_managers_and_admins(mailbox, settings):
    settings.MANAGERS = [("nobody", "nobody+manager@example.com")]
    settings.ADMINS = [("nobody", "nobody+admin@example.com")]
    mail_managers("Subject", "Content", html_message="HTML Content")
    message = mailbox.the_message()
    assert message.get("subject") == "[Django] Subject"
    assert message.get_all("to") == ["nobody+manager@example.com"]
    assert message.is_multipart()
    mailbox.flush()
    mail_admins("Subject", "Content", html_message="HTML Content")
    assert mailbox.the_message().get_all("to") == ["nobody+admin@example.com"]


def test_manager_and_admin_mail_prefix_with_a_lazy_subject(mailbox, settings):
    """Django's regression test for ticket 13494."""
    settings.MANAGERS = [("nobody", "nobody+manager@example.com")]
    settings.ADMINS = [("nobody", "nobody+admin@example.com")]
    mail_managers(gettext_lazy("Subject"), "Content")
    assert mailbox.the_message().get("subject") == "[Django] Subject"
    mailbox.flush()
    mail_admins(gettext_lazy("Subject"), "Content")
    assert mailbox.the_message().get("subject") == "[Django] Subject"


def test_empty_admins_send_nothing(mailbox, settings):
    """Ticket 9383: no recipients, no connection."""
    settings.ADMINS, settings.MANAGERS = [], []
    mail_admins("hi", "there")
    mail_managers("hi", "there")
    assert mailbox.messages() == []
    if mailbox.kind == "smtp":
        assert mailbox.server.recorder.connections == 0


def test_message_cc_header(mailbox):
    """Ticket 7722."""
    email = EmailMessage(
        "Subject", "Content", "from@example.com", ["to@example.com"], cc=["cc@example.com"]
    )
    mail.get_connection().send_messages([email])
    message = mailbox.the_message()
    assert (message["To"], message["Cc"]) == ("to@example.com", "cc@example.com")
    assert message["Date"]
    assert mailbox.envelopes()[0]["rcpt_tos"] == ["to@example.com", "cc@example.com"]


def test_idn_send(mailbox):
    """Ticket 14301: international domains go out in punycode."""
    assert send_mail("Subject", "Content", "from@öäü.com", ["to@öäü.com"])
    message = mailbox.the_message()
    assert message.get("from") == "from@xn--4ca9at.com"
    assert message.get("to") == "to@xn--4ca9at.com"
    mailbox.flush()
    EmailMessage(from_email="from@öäü.com", to=["to@öäü.com"], cc=["cc@öäü.com"]).send()
    message = mailbox.the_message()
    assert (message.get("from"), message.get("cc")) == ("from@xn--4ca9at.com", "cc@xn--4ca9at.com")
    assert mailbox.envelopes()[0] == {
        "mail_from": "from@xn--4ca9at.com",
        "rcpt_tos": ["to@xn--4ca9at.com", "cc@xn--4ca9at.com"],
    }


def test_recipient_without_domain(mailbox):
    """Ticket 15042."""
    assert send_mail("Subject", "Content", "tester", ["django"])
    message = mailbox.the_message()
    assert (message.get("from"), message.get("to")) == ("tester", "django")


def test_lazy_addresses(mailbox):
    """Ticket 24416: addresses may be lazy translations. Ours raised TypeError."""
    _ = gettext_lazy
    assert send_mail("Subject", "Content", _("tester"), [_("django")])
    message = mailbox.the_message()
    assert (message.get("from"), message.get("to")) == ("tester", "django")
    mailbox.flush()
    email = EmailMessage(
        from_email=_("tester"),
        to=[_("to1"), _("to2")],
        cc=[_("cc1"), _("cc2")],
        bcc=[_("bcc")],
        reply_to=[_("reply")],
    )
    assert email.recipients() == ["to1", "to2", "cc1", "cc2", "bcc"]
    email.send()
    message = mailbox.the_message()
    assert message.get("from") == "tester"
    assert (message.get("to"), message.get("cc")) == ("to1, to2", "cc1, cc2")
    assert message.get("Reply-To") == "reply"
    assert mailbox.envelopes()[0] == {
        "mail_from": "tester",
        "rcpt_tos": ["to1", "to2", "cc1", "cc2", "bcc"],
    }


@pytest.mark.parametrize("backend", [SMTP_BACKEND, OUTBOX_BACKEND])
def test_lazy_addresses_with_fail_silently(smtp_mailbox, backend):
    """fail_silently is about sending failing, and a lazy address is no failure: it is sent."""
    _ = gettext_lazy
    sent = get_connection(backend, fail_silently=True).send_messages(
        [EmailMessage("S", "B", _("alerts@example.com"), [_("ops@example.com")])]
    )
    assert sent == 1
    if backend == OUTBOX_BACKEND:
        assert OutboundEmail.objects.get().envelope_from == "alerts@example.com"
    else:
        assert smtp_mailbox.envelopes()[0]["rcpt_tos"] == ["ops@example.com"]


def test_close_connection(mailbox):
    """A connection can be closed even when it was never opened."""
    get_connection().close()


def test_use_as_contextmanager(smtp_mailbox):
    with get_connection() as connection:
        assert connection.transport is not None
        assert connection.send_messages([EmailMessage(to=["to@example.com"])]) == 1
        assert connection.transport is not None  # still open: the caller's connection
    assert connection.transport is None
    assert smtp_mailbox.server.recorder.connections == 1


# -- SMTPBackendTests ---------------------------------------------------------------------


def test_auth_attempted():
    """A stored user and password mean signing in: a server that offers no AUTH fails."""
    require_test_host()
    with smtp_server() as server:
        # Loopback, where signing in without TLS is allowed.
        configure(server, user=USERNAME, password=PASSWORD, host="127.0.0.1")
        with pytest.raises(SmtpProblem), get_connection(SMTP_BACKEND):
            pass


def test_server_open(smtp_mailbox):
    """open() says whether it opened a connection."""
    backend = get_connection(SMTP_BACKEND)
    assert backend.transport is None
    assert backend.open() is True
    assert backend.transport is not None and backend.open() is False
    backend.close()
    assert backend.transport is None and backend._partial_transport is None


def test_send_messages_empty_list_and_no_recipients(smtp_mailbox):
    backend = get_connection(SMTP_BACKEND)
    assert backend.send_messages([]) == 0
    assert backend.send_messages([EmailMessage("Subject", "Content", "f@example.com", to=[])]) == 0
    assert smtp_mailbox.messages() == []


def test_email_msg_uses_crlf(smtp_mailbox):
    """Ticket 23063: RFC-compliant messages go over SMTP, CRLF only, no bare CR or LF."""
    email = EmailMessage("Subject", "Line one\nLine two\rthree", "f@example.com", ["t@example.com"])
    mail.get_connection().send_messages([email])
    (received,) = smtp_mailbox.server.messages
    assert b"\r\n" in received.data
    assert b"\r" not in received.data.replace(b"\r\n", b"")
    assert b"\n" not in received.data.replace(b"\r\n", b"")


@pytest.mark.parametrize(
    "address",
    [
        "to@other.com@example.com",
        "to@other.com <to@example.com>",
        "@",
        "to@",
        "@example.com",
        '"evil@example.com\r\nto"@example.com',
        "to\nevil@example.com",
    ],
)
def test_avoids_sending_to_invalid_addresses(mailbox, address):
    """Invalid addresses cannot sneak into SMTP commands through bcc."""
    with pytest.raises(ValueError, match="Invalid address"):
        mail.get_connection().send_messages([EmailMessage(bcc=[address])])
    assert mailbox.envelopes() == []


def test_encodes_idna_in_smtp_commands(mailbox):
    email = EmailMessage(
        from_email="lists@discussão.example.org",
        to=["To Example <to@漢字.example.com>"],
        bcc=["monitor@discussão.example.org"],
        headers={
            "From": "Gestor de listas <lists@discussão.example.org>",
            "To": "Discussão Django <django@discussão.example.org>",
        },
    )
    mail.get_connection().send_messages([email])
    assert mailbox.envelopes()[0] == {
        "mail_from": "lists@xn--discusso-xza.example.org",
        "rcpt_tos": ["to@xn--p8s937b.example.com", "monitor@xn--discusso-xza.example.org"],
    }


def test_does_not_reencode_idna(mailbox):
    """IDNA 2008 domains encoded already are kept, never turned into IDNA 2003."""
    email = EmailMessage(
        from_email='"βόλος" <from@xn--fa-hia.example.com>',
        to=['"faß" <to@xn--10cl1a0b660p.example.com>'],
        cc=['"ශ්‍රී" <cc@xn--nxasmm1c.example.com>'],
        bcc=['"نامه‌ای." <bcc@xn--mgba3gch31f060k.example.com>'],
    )
    mail.get_connection().send_messages([email])
    assert mailbox.envelopes()[0] == {
        "mail_from": "from@xn--fa-hia.example.com",
        "rcpt_tos": [
            "to@xn--10cl1a0b660p.example.com",
            "cc@xn--nxasmm1c.example.com",
            "bcc@xn--mgba3gch31f060k.example.com",
        ],
    }


# -- SMTPBackendStoppedServerTests --------------------------------------------------------


def test_stopped_server_close_and_fail_silently():
    require_test_host()
    with smtp_server() as server:
        configure(server)
    backend = get_connection(SMTP_BACKEND)
    backend.close()  # closing while the server is down raises nothing
    with pytest.raises(ConnectionError):  # Django raises the socket's error; ours is both
        backend.open()
    assert backend.transport is None
    backend.fail_silently = True
    assert backend.open() is None
    assert backend.transport is None
    # send_messages() sends nothing after open() failed silently.
    assert backend.send_messages([EmailMessage(to=["to@example.com"])]) == 0


# -- Failures that are also smtplib's exceptions (issue 13) --------------------------------


def test_refused_recipients_are_smtplibs_recipients_refused():
    require_test_host()
    refusal = "550 5.1.1 <nobody@example.com>: Recipient address rejected"
    with smtp_server() as server:
        configure(server)
        server.recorder.refuse_recipients = {"nobody@example.com": refusal}
        try:
            get_connection(SMTP_BACKEND).send_messages([EmailMessage(to=["nobody@example.com"])])
        except smtplib.SMTPRecipientsRefused as error:
            caught = error
    assert isinstance(caught, SmtpProblem) and caught.kind == "recipients-refused"
    assert list(caught.recipients) == ["nobody@example.com"]
    code, text = caught.recipients["nobody@example.com"]
    assert code == 550 and b"Recipient address rejected" in text
    assert "refused every recipient" in str(caught)


def test_refused_sender_is_smtplibs_sender_refused():
    require_test_host()
    with smtp_server() as server:
        configure(server)
        server.recorder.refuse_sender = "553 5.7.1 Sender address rejected: not owned by user"
        try:
            get_connection(SMTP_BACKEND).send_messages([EmailMessage(to=["bob@example.com"])])
        except smtplib.SMTPSenderRefused as error:
            caught = error
    assert isinstance(caught, SmtpProblem)
    assert caught.smtp_code == 553 and b"not owned by user" in caught.smtp_error
    assert caught.sender == "gateway@example.com"
    assert "refused the sender address gateway@example.com" in str(caught)


def test_a_temporary_sender_refusal_is_smtplibs_sender_refused_too():
    require_test_host()
    with smtp_server() as server:
        configure(server)
        server.recorder.refuse_sender = "451 4.3.0 Try again later"
        with pytest.raises(smtplib.SMTPSenderRefused) as caught:
            get_connection(SMTP_BACKEND).send_messages([EmailMessage(to=["bob@example.com"])])
    assert caught.value.smtp_code == 451 and caught.value.temporary


@pytest.mark.parametrize(
    ("reply", "kind"),
    [("554 5.6.0 Message rejected as spam", "data"), ("552 5.3.4 Message too big", "too-large")],
)
def test_a_refused_message_is_smtplibs_data_error(reply, kind):
    require_test_host()
    with smtp_server() as server:
        configure(server)
        server.recorder.data_replies = [reply]
        with pytest.raises(smtplib.SMTPDataError) as caught:
            get_connection(SMTP_BACKEND).send_messages([EmailMessage(to=["bob@example.com"])])
    error = caught.value
    assert isinstance(error, SmtpProblem) and error.kind == kind
    code, text = reply.split(" ", 1)
    assert (error.smtp_code, error.smtp_error) == (int(code), text.encode())


def test_a_refused_password_is_smtplibs_authentication_error():
    require_test_host()
    with smtp_server(auth=True) as server:
        configure(server, user=USERNAME, host="127.0.0.1", password="wrong password")
        with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
            get_connection(SMTP_BACKEND).send_messages([EmailMessage(to=["bob@example.com"])])
    error = caught.value
    assert isinstance(error, SmtpProblem) and error.kind == "auth-refused"
    assert error.smtp_code == 535 and error.smtp_error.startswith(b"5.7.8")
    assert "refused the user name or password" in str(error)
    assert "wrong password" not in str(error) + repr(error.args)


# -- The test e-mail is addressed like real mail (issue 13) --------------------------------


@pytest.fixture
def server_without_smtputf8():
    require_test_host()
    recorder = Recorder()
    controller = RecordingController(
        recorder,
        hostname="127.0.0.1",
        port=free_port(),
        enable_SMTPUTF8=False,
        server_hostname=TEST_HOST,
        auth_exclude_mechanism=["LOGIN", "PLAIN"],
    )
    controller.start()
    try:
        yield type("S", (), {"host": TEST_HOST, "port": controller.port, "recorder": recorder})
    finally:
        controller.stop()


def test_test_email_to_an_idn_domain_goes_out_in_punycode(server_without_smtputf8, capsys):
    server = server_without_smtputf8
    configure(server)
    call_command("smtp_settings", "test", "--to", "user@bücher.example")
    assert "Delivered" in capsys.readouterr().out
    (received,) = server.recorder.messages
    assert received.rcpt_tos == ["user@xn--bcher-kva.example"]
    assert received.message["To"] == "user@xn--bcher-kva.example"


def test_real_mail_and_the_test_email_agree_on_an_idn_sender(server_without_smtputf8):
    server = server_without_smtputf8
    configure(server, sender_email="gateway@bücher.example")
    get_connection(SMTP_BACKEND).send_messages([EmailMessage(to=["bob@example.com"])])
    call_command("smtp_settings", "test", "--to", "bob@example.com")
    assert [m.mail_from for m in server.recorder.messages] == ["gateway@xn--bcher-kva.example"] * 2
