"""plan(settings): the design's encryption rules table, row by row, without a socket."""

import pytest

from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, Security, SmtpConfig, plan

AUTO, SMTPS = Encryption.AUTOMATIC, Encryption.FORCE_SMTPS


@pytest.mark.parametrize(
    ("encryption", "port", "host", "options", "security"),
    [
        # Automatic, 465, any host: SMTPS
        (AUTO, 465, "smtp.example.com", {}, Security.SMTPS),
        (AUTO, 465, "localhost", {}, Security.SMTPS),
        (AUTO, 465, "127.0.0.1", {}, Security.SMTPS),
        # Automatic, 25, any host: plain SMTP, no STARTTLS
        (AUTO, 25, "smtp.example.com", {}, Security.PLAIN),
        (AUTO, 25, "localhost", {}, Security.PLAIN),
        # Automatic, any port, localhost or loopback: plain SMTP
        (AUTO, 587, "localhost", {}, Security.PLAIN),
        (AUTO, 587, "LOCALHOST", {}, Security.PLAIN),
        (AUTO, 2525, "127.0.0.1", {}, Security.PLAIN),
        (AUTO, 2525, "127.45.6.7", {}, Security.PLAIN),
        (AUTO, 587, "::1", {}, Security.PLAIN),
        (AUTO, 587, "::ffff:127.0.0.1", {}, Security.PLAIN),
        # Automatic, any other port and host: STARTTLS, required
        (AUTO, 587, "smtp.example.com", {}, Security.STARTTLS),
        (AUTO, 2525, "smtp.example.com", {}, Security.STARTTLS),
        (AUTO, 587, "192.0.2.10", {}, Security.STARTTLS),
        (AUTO, 587, "localhost.example.com", {}, Security.STARTTLS),
        (AUTO, 587, "128.0.0.1", {}, Security.STARTTLS),
        # Force SMTPS, any port, any host: SMTPS on that port
        (SMTPS, 587, "smtp.example.com", {}, Security.SMTPS),
        (SMTPS, 25, "smtp.example.com", {}, Security.SMTPS),
        (SMTPS, 2525, "localhost", {}, Security.SMTPS),
        # auto_tls: false turns STARTTLS off
        (AUTO, 587, "smtp.example.com", {"auto_tls": False}, Security.PLAIN),
        (AUTO, 465, "smtp.example.com", {"auto_tls": False}, Security.SMTPS),
        (SMTPS, 587, "smtp.example.com", {"auto_tls": "off"}, Security.SMTPS),
        # require_tls: true makes STARTTLS required where the table says plain
        (AUTO, 25, "smtp.example.com", {"require_tls": True}, Security.STARTTLS),
        (AUTO, 587, "localhost", {"require_tls": True}, Security.STARTTLS),
        (AUTO, 2525, "127.0.0.1", {"require_tls": "yes"}, Security.STARTTLS),
        (AUTO, 587, "smtp.example.com", {"require_tls": True}, Security.STARTTLS),
        (AUTO, 465, "smtp.example.com", {"require_tls": True}, Security.SMTPS),
    ],
)
def test_rules_table(encryption, port, host, options, security):
    config = SmtpConfig(host, port, encryption, options=parse_options(options))
    assert plan(config).security is security


def test_the_issue_example_sentence():
    config = SmtpConfig("smtp.example.com", 587, AUTO, "alice")
    assert plan(config).describe() == (
        "Connects to smtp.example.com:587, upgrades with STARTTLS (required), "
        "verifies the server certificate, signs in as alice."
    )


def test_sentences_say_why_and_what_is_verified():
    smtps = plan(SmtpConfig("smtp.example.com", 465, options=parse_options({"verify_peer": False})))
    assert "with TLS from the first byte (SMTPS: port 465)" in smtps.describe()
    assert "does not verify the server certificate (verify_peer is off)" in smtps.describe()
    pinned = plan(
        SmtpConfig(
            "smtp.example.com",
            587,
            options=parse_options({"peer_fingerprint": "ab" * 32}),
            trusted_certificate="-----BEGIN CERTIFICATE-----...",
        )
    )
    assert "against the system's CAs and the stored trusted certificate" in pinned.describe()
    assert "requires the certificate fingerprint SHA-256 AB:AB:" in pinned.describe()
    local = plan(SmtpConfig("localhost", 587))
    assert local.describe() == (
        "Connects to localhost:587 without encryption (the server is this machine), "
        "does not sign in."
    )
    assert "[::1]:2525" in plan(SmtpConfig("::1", 2525)).describe()


def test_blank_user_skips_authentication():
    assert not plan(SmtpConfig("smtp.example.com", 587, username="")).authenticates
    assert plan(SmtpConfig("smtp.example.com", 587, username="alice")).authenticates


@pytest.mark.parametrize(
    ("port", "host", "options", "refused"),
    [
        (25, "smtp.example.com", {}, True),
        (587, "smtp.example.com", {"auto_tls": False}, True),
        (25, "localhost", {}, False),  # loopback: the password never leaves the machine
        (2525, "127.0.0.1", {}, False),
        (587, "smtp.example.com", {}, False),
        (465, "smtp.example.com", {}, False),
        (25, "smtp.example.com", {"require_tls": True}, False),
    ],
)
def test_password_is_never_planned_over_plain_smtp_to_a_remote_host(port, host, options, refused):
    result = plan(SmtpConfig(host, port, username="alice", options=parse_options(options)))
    assert (result.refusal is not None) is refused
    if refused:
        assert "port 587 (STARTTLS), port 465 or Force SMTPS" in result.refusal
        assert "will not sign in as alice" in result.describe()


def test_refusal_names_auto_tls_when_that_is_the_cause():
    result = plan(
        SmtpConfig(
            "smtp.example.com", 587, username="a", options=parse_options({"auto_tls": False})
        )
    )
    assert "remove auto_tls: false" in result.refusal


def test_no_refusal_without_a_user():
    assert plan(SmtpConfig("smtp.example.com", 25)).refusal is None
