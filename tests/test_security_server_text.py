"""Issue 10, hole 7: a hostile SMTP server's text never reaches a terminal, a page or the
outbox with its control characters. Real aiosmtpd servers that put terminal escape sequences
in their greeting, their EHLO reply, a 5xx refusal and their certificate; the real
`smtp_settings test` command, the real settings page and a real outbox delivery."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import ssl
import unicodedata

import pytest
import trustme
from aiosmtpd.smtp import SMTP
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.management import CommandError, call_command

from gatewaymgr.untrusted import PLACEHOLDER, printable
from notifications.delivery import Courier
from notifications.models import DeliveryAttempt, OutboundEmail
from smtpsettings import store
from smtpsettings.models import SmtpTestRun
from smtpsettings.tasks import run_smtp_test
from tests.outbox import point_settings_at, queue
from tests.smtpservers import TEST_HOST, Certificates, Recorder, require_test_host, smtp_server

pytestmark = pytest.mark.django_db

# Clear the screen, set the window title, ring the bell, turn the text red; a bidi override
# and the 8-bit CSI as well.
EVIL = "\x1b[2J\x1b]0;pwned\x07\x1b[31m\u202e\x9b1m"
RECIPIENT = "x@example.com"


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def control_characters(text: str) -> list[str]:
    """Every control or format character in `text` except the line breaks of the output."""
    return [char for char in text if char != "\n" and unicodedata.category(char) in ("Cc", "Cf")]


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.items() for part in item for s in strings_in(part)]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


class HostileRecorder(Recorder):
    """Greets, answers EHLO and refuses the recipient with escape sequences in its text."""

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        await super().handle_EHLO(server, session, envelope, hostname, responses)
        return [
            f"250-hostile{EVIL}.example",
            *responses[1:-1],
            f"250-X-HOSTILE {EVIL}shown",
            responses[-1],
        ]


def hostile_recorder() -> HostileRecorder:
    return HostileRecorder(refuse_recipients={RECIPIENT: f"550 5.1.1 {EVIL}no such user{EVIL}"})


class GreeterSMTP(SMTP):
    """aiosmtpd greets with its host name: this one's carries EVIL."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hostname = f"greeter{EVIL}.example"


@pytest.fixture
def hostile_server(monkeypatch):
    """A server that greets, answers EHLO and refuses the recipient with EVIL in its text."""

    @contextlib.contextmanager
    def start(**kwargs):
        with monkeypatch.context() as patch:
            patch.setattr("tests.smtpservers.SMTP", GreeterSMTP)
            with smtp_server(recorder=hostile_recorder(), **kwargs) as server:
                yield server

    return start


def run_test_command(*extra: str) -> tuple[str, str]:
    """`smtp_settings test --to x@example.com`: (standard output, the error it exits with)."""
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("smtp_settings", "test", "--to", RECIPIENT, *extra, stdout=out)
    assert caught.value.returncode == 2
    return out.getvalue(), str(caught.value)


def test_the_test_command_prints_no_escape_sequences_from_a_hostile_server(hostile_server):
    with hostile_server() as server:
        point_settings_at(server.host, server.port)
        output, error = run_test_command()
    assert server.recorder.ehlo_names  # the conversation really happened
    for text in (output, error):
        assert control_characters(text) == [], text
    # What the server said is still there to read, with the escapes visibly replaced.
    assert f"220 greeter{PLACEHOLDER}[2J{PLACEHOLDER}]0;pwned{PLACEHOLDER}" in output
    assert "hostile" in output and "X-HOSTILE" in output and "shown" in output
    assert "no such user" in output and "no such user" in error
    assert "550 5.1.1" in error


def test_the_json_transcript_holds_no_control_characters_either(hostile_server):
    with hostile_server() as server:
        point_settings_at(server.host, server.port)
        output, _ = run_test_command("--json")
    transcript = json.loads(output)
    values = strings_in(transcript)
    assert [v for v in values if control_characters(v)] == []
    assert any("pwned" in v for v in values)
    assert "no such user" in transcript["problem"]["server_reply"]


def hostile_certificate() -> Certificates:
    """A self-signed certificate for TEST_HOST whose subject and issuer carry EVIL."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Evil{EVIL}Corp"),
            x509.NameAttribute(NameOID.COMMON_NAME, TEST_HOST),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(TEST_HOST)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with trustme.Blob(pem.encode() + key_pem.encode()).tempfile() as path:
        context.load_cert_chain(path)
    return Certificates(None, context, pem, pem)


def test_a_hostile_certificates_subject_is_shown_without_its_escapes():
    with smtp_server(mode="starttls", certs=hostile_certificate()) as server:
        record = store.load()
        record.sender_email = "gateway@example.com"
        record.host, record.port = server.host, server.port
        record.options = {"timeout": 5}
        record.save()
        output, error = run_test_command()
    for text in (output, error):
        assert control_characters(text) == [], text
    assert "O=Evil" in output and "Corp" in output
    assert "not signed by an authority this machine trusts" in error
    assert "subject CN=smtp.gatewaymgr.test,O=Evil" in error


def test_the_settings_pages_transcript_shows_no_control_characters(admin_client, hostile_server):
    with hostile_server() as server:
        response = admin_client.post(
            "/settings/smtp/",
            {
                "sender_email": "gateway@example.com",
                "host": server.host,
                "port": str(server.port),
                "encryption": "auto",
                "username": "",
                "password": "",
                "options": '{"timeout": 5, "auto_tls": false}',
                "trusted_certificate": "",
                "test_to": RECIPIENT,
                "action": "test",
            },
        )
        run = response.context["test_run"]
        run_smtp_test.call(run.pk)
    html = admin_client.get(f"/settings/smtp/test/{run.pk}/").content.decode()
    assert control_characters(html) == []
    assert "no such user" in html and "pwned" in html
    assert SmtpTestRun.objects.filter(pk=run.pk).exists()


def test_the_outbox_stores_a_hostile_refusal_without_control_characters(hostile_server):
    with hostile_server() as server:
        point_settings_at(server.host, server.port)
        queue(1, recipients=(RECIPIENT,))
        Courier().drain()
    email = OutboundEmail.objects.get()
    assert email.status == "failed"
    stored = [email.last_error, *strings_in(email.recipients)]
    stored += [a.reply for a in DeliveryAttempt.objects.all()]
    stored += [a.advice for a in DeliveryAttempt.objects.all()]
    assert [s for s in stored if control_characters(s)] == []
    assert any("no such user" in s for s in stored)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250 OK", "250 OK"),
        ("Grüße, 東京 — ok…", "Grüße, 東京 — ok…"),
        ("a\tb\r\nc", "a b  c"),
        ("\x1b[2Jx", f"{PLACEHOLDER}[2Jx"),
        ("\x1b]0;t\x07", f"{PLACEHOLDER}]0;t{PLACEHOLDER}"),
        ("\x9b31m\x00\x7f", f"{PLACEHOLDER}31m{PLACEHOLDER}{PLACEHOLDER}"),
        ("abc\u202eexe.txt", f"abc{PLACEHOLDER}exe.txt"),
        ("line\u2028sep", f"line{PLACEHOLDER}sep"),
    ],
)
def test_printable_replaces_only_what_a_terminal_would_act_on(text, expected):
    assert printable(text) == expected


def test_show_prints_a_trusted_hostile_certificate_without_its_escapes():
    # "Trust this certificate" stores what a server presented: its subject is the server's text.
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port = TEST_HOST, 587
    record.trusted_certificate = hostile_certificate().pem
    record.save()
    out = io.StringIO()
    call_command("smtp_settings", "show", stdout=out)
    assert control_characters(out.getvalue()) == [], out.getvalue()
    assert "Trusted cert: CN=smtp.gatewaymgr.test,O=Evil" in out.getvalue()
    as_json = io.StringIO()
    call_command("smtp_settings", "show", "--json", stdout=as_json)
    values = strings_in(json.loads(as_json.getvalue()))
    assert [v for v in values if control_characters(v)] == []


def test_the_settings_page_shows_a_trusted_hostile_certificate_without_its_escapes(admin_client):
    response = admin_client.post(
        "/settings/smtp/",
        {
            "sender_email": "gateway@example.com",
            "host": TEST_HOST,
            "port": "587",
            "encryption": "auto",
            "username": "",
            "password": "",
            "options": "",
            "trusted_certificate": hostile_certificate().pem,
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    page = admin_client.get("/settings/smtp/").content.decode()
    assert "O=Evil" in page  # the details and the change history name it
    assert control_characters(page) == []
