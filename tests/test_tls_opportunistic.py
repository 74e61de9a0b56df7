"""Opportunistic TLS on port 25 and to loopback (issue 13), against real aiosmtpd servers:
STARTTLS whenever the server offers it, the certificate not required to be valid (Postfix's
`may`); plain only when it is not offered. Every assertion about encryption is made on the
server's side: whether the message arrived over TLS."""

from __future__ import annotations

import hashlib
import html
import json
import ssl
from dataclasses import replace

import pytest

from smtpsettings import keyring, store
from smtpsettings.models import PasswordState, SmtpSettings, WrongServerPassword
from tests.smtpservers import PASSWORD, USERNAME, require_test_host, self_signed, smtp_server
from tests.test_security_password import run_test, save, send_with_stored_settings, values
from tests.tls_servers import problem_of, send, tls_server, transport


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def test_port_25_uses_starttls_when_the_server_offers_it_even_with_an_untrusted_certificate():
    """The help page's "no STARTTLS required" on port 25 must not mean "no STARTTLS at all":
    invitation links would cross the network in clear to a server that offers encryption."""
    with tls_server(mode="starttls", certs=self_signed(), port=25) as server:
        sender = transport(server)
        send(sender, 2)
    assert server.recorder.message_tls == [True, True]


def test_loopback_uses_starttls_when_the_server_offers_it():
    with tls_server(mode="starttls") as server:
        send(transport(server, host="127.0.0.1"))
    assert server.recorder.message_tls == [True]


def test_port_25_sends_plain_only_when_starttls_is_not_offered():
    steps = []
    with tls_server(mode="plain", port=25) as server:
        send(transport(server, observer=steps.append))
    assert server.recorder.message_tls == [False]
    starttls = [s for s in steps if s.name == "starttls"]
    assert starttls[0].ok and "not offered by the server" in starttls[0].detail


def test_auto_tls_false_still_sends_plain_when_starttls_is_offered():
    with tls_server(mode="starttls", port=25) as server:
        send(transport(server, auto_tls=False))
    assert server.recorder.message_tls == [False]


def test_require_tls_on_port_25_still_verifies_the_certificate():
    with tls_server(mode="starttls", certs=self_signed(), port=25) as server:
        problem = problem_of(transport(server, require_tls=True))
    assert problem.kind == "untrusted"
    assert server.messages == []


def test_a_wrong_pin_on_port_25_sends_nothing():
    """Today a wrong pin on port 25 is silently unused: every message goes out in clear."""
    with tls_server(mode="starttls", port=25) as server:
        wrong_pin = transport(server, peer_fingerprint="ab" * 32, verify_peer=False)
        problem = problem_of(wrong_pin, count=200)
    assert problem.kind == "fingerprint-mismatch"
    assert server.messages == []


def test_a_pin_on_port_25_without_starttls_sends_nothing_and_names_the_pin():
    with tls_server(mode="plain", port=25) as server:
        problem = problem_of(transport(server, peer_fingerprint="ab" * 32), count=200)
    assert problem.kind == "starttls-missing"
    assert "peer_fingerprint cannot be checked" in problem.advice
    assert server.messages == []


def test_a_right_pin_on_port_25_delivers_over_tls():
    with tls_server(mode="starttls", port=25) as server:
        pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(server.certificates.pem)).hexdigest()
        send(transport(server, peer_fingerprint=pin, verify_peer=False))
    assert server.recorder.message_tls == [True]


def test_a_trusted_certificate_on_port_25_is_checked():
    with tls_server(mode="starttls", port=25) as server:
        problem = problem_of(transport(server, trusted=self_signed().pem))
    assert problem.kind == "untrusted"
    assert server.messages == []


def test_no_password_to_a_remote_host_over_opportunistic_tls():
    """The password rule is unchanged: opportunistic TLS is not verified TLS."""
    with tls_server(mode="starttls", port=25, auth=True) as server:
        problem = problem_of(transport(server, user=USERNAME, password=PASSWORD))
    assert problem.kind == "password-unencrypted"
    assert server.recorder.sign_in_attempts == []
    assert server.messages == []


def test_loopback_signs_in_after_starttls_to_a_server_that_offers_auth_only_over_tls():
    """Today a loopback relay that offers AUTH only after STARTTLS cannot be used at all."""
    with tls_server(mode="starttls", auth=True, auth_require_tls=True) as server:
        send(transport(server, host="127.0.0.1", user=USERNAME, password=PASSWORD))
    assert server.recorder.sign_in_attempts == [("PLAIN", True)]
    assert server.recorder.message_tls == [True]


def test_a_password_sealed_for_plain_loopback_before_the_upgrade_still_signs_in(settings):
    """Settings saved before opportunistic TLS were sealed as "plain": that binding only got
    stronger, so the password is still revealed; one sealed for verified TLS is not."""
    stored = SmtpSettings(host="localhost", port=587, username="alice")
    for security, revealed in (("plain", True), ("starttls", False)):
        sealed = replace(stored.binding(), security=security)
        payload = {"binding": sealed.encode(), "extra": [], "value": "pw"}
        stored.password_token = keyring.encrypt(json.dumps(payload))
        if revealed:
            assert stored.reveal_password() == "pw"
        else:
            with pytest.raises(WrongServerPassword):
                stored.reveal_password()


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["page save", "test e-mail"])
def test_verified_tls_becoming_opportunistic_never_hands_the_password_to_a_fake_relay(
    admin_client, how
):
    """The password was saved for a loopback relay verified by its trusted certificate and
    require_tls; an edit that leaves only opportunistic TLS (any certificate accepted) must not
    send it to whatever now listens on that port."""
    genuine, fake = self_signed(), self_signed()
    with smtp_server(mode="starttls", certs=fake, auth=True) as server:
        verified = values(
            server,
            host="127.0.0.1",
            options='{"timeout": 5, "require_tls": true}',
            trusted_certificate=genuine.pem,
        )
        save(admin_client, {**verified, "password": PASSWORD})
        assert store.load().password_state is PasswordState.SET
        opportunistic = {**verified, "options": '{"timeout": 5}', "trusted_certificate": ""}
        if how == "page save":
            page = html.unescape(save(admin_client, opportunistic))
            assert "the connection no longer requires verified TLS" in page
            problem = send_with_stored_settings()
            assert problem is not None and "No password is stored" in problem.advice
        else:
            assert "No password is stored for these values" in run_test(admin_client, opportunistic)
    assert server.recorder.logins == []
