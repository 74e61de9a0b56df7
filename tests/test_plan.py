"""plan(settings): the design's encryption rules table, row by row, without a socket."""

import pytest

from smtpsettings.binding import binding_of, loosened, same_or_upgraded
from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, Security, SmtpConfig, plan

AUTO, SMTPS = Encryption.AUTOMATIC, Encryption.FORCE_SMTPS
MAY = Security.OPPORTUNISTIC  # STARTTLS when offered, not verified (Postfix's "may")
PIN = {"peer_fingerprint": "ab" * 32}


@pytest.mark.parametrize(
    ("encryption", "port", "host", "options", "security"),
    [
        # Automatic, 465, any host: SMTPS
        (AUTO, 465, "smtp.example.com", {}, Security.SMTPS),
        (AUTO, 465, "localhost", {}, Security.SMTPS),
        (AUTO, 465, "127.0.0.1", {}, Security.SMTPS),
        # Automatic, 25, any host: STARTTLS when offered, unverified; plain when not offered
        (AUTO, 25, "smtp.example.com", {}, MAY),
        (AUTO, 25, "localhost", {}, MAY),
        (AUTO, 25, "smtp.example.com", {"verify_peer": False}, MAY),
        # Automatic, any port, localhost or loopback: as for port 25
        (AUTO, 587, "localhost", {}, MAY),
        (AUTO, 587, "LOCALHOST", {}, MAY),
        (AUTO, 2525, "127.0.0.1", {}, MAY),
        (AUTO, 2525, "127.45.6.7", {}, MAY),
        (AUTO, 587, "::1", {}, MAY),
        (AUTO, 587, "::ffff:127.0.0.1", {}, MAY),
        # ... unless a pin asks to verify the server: then STARTTLS is required and checked
        (AUTO, 25, "smtp.example.com", PIN, Security.STARTTLS),
        (AUTO, 2525, "127.0.0.1", PIN, Security.STARTTLS),
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
        (AUTO, 25, "smtp.example.com", {"auto_tls": False}, Security.PLAIN),
        (AUTO, 2525, "127.0.0.1", {"auto_tls": False}, Security.PLAIN),
        (AUTO, 25, "smtp.example.com", {"auto_tls": False, **PIN}, Security.PLAIN),
        (AUTO, 465, "smtp.example.com", {"auto_tls": False}, Security.SMTPS),
        (SMTPS, 587, "smtp.example.com", {"auto_tls": "off"}, Security.SMTPS),
        # require_tls: true makes STARTTLS required (and verified) where the table says
        # opportunistic
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
        "Connects to localhost:587, upgrades with STARTTLS when the server offers it, without "
        "verifying the server certificate, else sends without encryption (opportunistic TLS: "
        "the server is this machine), does not sign in."
    )
    assert "(opportunistic TLS: port 25)" in plan(SmtpConfig("mx.example.com", 25)).describe()
    plain = plan(SmtpConfig("localhost", 587, options=parse_options({"auto_tls": False})))
    assert plain.describe() == (
        "Connects to localhost:587 without encryption (auto_tls is off), does not sign in."
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
        (25, "smtp.example.com", PIN, False),  # STARTTLS required and pinned
        (587, "localhost", {"auto_tls": False}, False),
    ],
)
def test_password_is_never_planned_over_plain_smtp_to_a_remote_host(port, host, options, refused):
    result = plan(SmtpConfig(host, port, username="alice", options=parse_options(options)))
    assert (result.refusal is not None) is refused
    if refused:
        assert "The password would cross the network unencrypted" in result.refusal
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


def test_opportunistic_tls_does_not_carry_a_password_to_a_remote_host():
    """The password rule is unchanged: STARTTLS when offered is not verified TLS."""
    result = plan(SmtpConfig("smtp.example.com", 25, username="alice"))
    assert result.security is MAY
    assert "or to a server that is not verified" in result.refusal
    assert '{"require_tls": true}' in result.refusal
    assert result.describe().endswith("but will not sign in as alice without verified TLS.")


@pytest.mark.parametrize(
    ("options", "trusted", "said"),
    [
        ({"auto_tls": False, **PIN}, "", "does not use peer_fingerprint"),
        ({"auto_tls": False}, "PEM", "does not use the trusted certificate"),
    ],
)
def test_a_pin_or_trusted_certificate_a_connection_never_checks_is_said(options, trusted, said):
    """A pin on a plain connection is never silently unused: the sentence says so."""
    config = SmtpConfig(
        "relay.example.com", 25, options=parse_options(options), trusted_certificate=trusted
    )
    sentence = plan(config).describe()
    assert sentence.startswith("Connects to relay.example.com:25 without encryption")
    assert f"{said}, which only verified TLS checks" in sentence


def test_a_pin_or_trusted_certificate_on_port_25_makes_starttls_required():
    pinned = plan(SmtpConfig("mx.example.com", 25, options=parse_options(PIN)))
    assert "upgrades with STARTTLS (required: peer_fingerprint is set)" in pinned.describe()
    assert "requires the certificate fingerprint SHA-256 AB:AB:" in pinned.describe()
    trusted = plan(SmtpConfig("mx.example.com", 25, trusted_certificate="-----BEGIN..."))
    assert trusted.security is Security.STARTTLS
    assert "(required: a trusted certificate is stored)" in trusted.describe()


def _binding(port, host="smtp.example.com", **options):
    return binding_of(plan(SmtpConfig(host, port, username="a", options=parse_options(options))))


def test_the_binding_ranks_opportunistic_tls_below_verified_tls():
    """Going from verified TLS to opportunistic loosens what a stored password is bound to."""
    verified, may = _binding(25, require_tls=True), _binding(25)
    assert loosened(verified, may) == ["the connection no longer requires verified TLS"]
    assert loosened(may, verified) == []
    assert loosened(may, _binding(25, auto_tls=False)) == ["the connection is no longer encrypted"]
    assert loosened(_binding(25, auto_tls=False), may) == []


def test_a_password_sealed_for_plain_loopback_still_opens_once_it_is_opportunistic():
    """An upgrade turns localhost's plain SMTP into opportunistic TLS: a tightening, so the
    password stored for it still signs in; the other way it does not."""
    old = _binding(587, "localhost", auto_tls=False)
    new = _binding(587, "localhost")
    assert same_or_upgraded(old, new)
    assert not same_or_upgraded(new, old)
    assert not same_or_upgraded(old, _binding(2525, "localhost"))
