"""The diagnosis wording of issue 13, each reproduced against a real aiosmtpd server
configured to produce it."""

from __future__ import annotations

import hashlib
import re
import socket
import ssl

import pytest

from tests.smtpservers import (
    TEST_HOST,
    Certificates,
    Server,
    certificates,
    require_test_host,
    self_signed,
)
from tests.tls_servers import problem_of, tls_server, transport


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def test_force_smtps_against_starttls_on_a_non_standard_port_advises_automatic_on_that_port():
    with tls_server(mode="starttls") as server:
        problem = problem_of(transport(server, encryption="smtps"))
    assert problem.kind == "wrong-mode"
    assert f"choose Encryption: Automatic on port {server.port}" in problem.advice
    assert "587" not in problem.advice


def test_force_smtps_against_plain_port_25_does_not_claim_starttls():
    """A plain relay on 25 may not offer STARTTLS at all: the advice must not say it does."""
    with tls_server(mode="plain", port=25) as server:
        problem = problem_of(transport(server, encryption="smtps"))
    assert problem.kind == "wrong-mode"
    assert "speaks STARTTLS" not in problem.advice
    assert "does not speak SMTPS on this port" in problem.advice
    assert "choose Encryption: Automatic" in problem.advice


def test_automatic_against_smtps_on_another_port_says_so_instead_of_waiting_the_timeout():
    steps = []
    with tls_server(mode="smtps") as server:
        problem = problem_of(transport(server, timeout=20, observer=steps.append))
    assert problem.kind == "wrong-mode"
    assert "answered a TLS handshake" in problem.advice
    assert "choose Force SMTPS" in problem.advice
    assert server.messages == []
    greeting = next(s for s in steps if s.name == "greeting")
    assert not greeting.ok and "within 3 seconds" in greeting.detail


def test_an_ip_address_mismatch_names_the_address_and_the_certificates_names():
    certs = certificates()  # issued for smtp.gatewaymgr.test only
    with tls_server(mode="smtps", certs=certs) as server:
        problem = problem_of(
            transport(server, host="127.0.0.1", encryption="smtps", trusted=certs.ca_pem)
        )
    assert problem.kind == "hostname-mismatch"
    assert "is for smtp.gatewaymgr.test, not for the IP address 127.0.0.1" in problem.advice
    assert ".." not in problem.advice


@pytest.mark.parametrize("port", [None, 25])  # STARTTLS required; opportunistic on 25
def test_a_server_side_tls_failure_does_not_blame_encryption_and_port(port):
    """The server agrees to STARTTLS, then cannot complete the handshake (it has no
    certificate): Encryption and Port are right, the server's TLS is not."""
    broken = Certificates(None, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH), "", "")
    with tls_server(mode="starttls", certs=broken, port=port) as server:
        problem = problem_of(transport(server))
    assert "Check that Encryption and Port" not in problem.advice
    assert "agreed to STARTTLS, then closed the connection" in problem.advice
    assert "on the server's side" in problem.advice
    assert problem.kind == "tls-server"
    # Opportunistic TLS may be turned off until the server is fixed; required TLS may not.
    assert ('{"auto_tls": false}' in problem.advice) is (port == 25)
    assert server.messages == []


def test_require_tls_on_port_25_names_require_tls():
    with tls_server(mode="plain", port=25) as server:
        problem = problem_of(transport(server, require_tls=True))
    assert problem.kind == "starttls-missing"
    assert '{"require_tls": true} requires' in problem.advice
    assert "required on port 25" not in problem.advice
    assert server.messages == []


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_the_wrong_pin_text_shows_each_fingerprint_once(algorithm):
    certs = self_signed()
    with tls_server(mode="smtps", certs=certs) as server:
        problem = problem_of(
            transport(
                server,
                encryption="smtps",
                verify_peer=False,
                peer_fingerprint="ab" * (32 if algorithm == "sha256" else 20),
            )
        )
    assert problem.kind == "fingerprint-mismatch"
    actual = hashlib.new(algorithm, ssl.PEM_cert_to_DER_cert(certs.pem)).hexdigest()
    flat = re.sub(r"[^0-9a-f]", "", problem.advice.lower())
    assert flat.count(actual) == 1
    size = 32 if algorithm == "sha256" else 20
    assert problem.advice.count(":".join(["AB"] * size)) == 1  # the pin, once


def test_a_silent_server_that_does_not_answer_tls_either_is_not_called_smtps():
    """A port that accepts and says nothing, even to a ClientHello, is not SMTPS: advising
    Force SMTPS would send the administrator the wrong way."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # never accepts
        server = Server(TEST_HOST, silent.getsockname()[1], None, None)
        problem = problem_of(transport(server, timeout=2))
    assert problem.kind == "no-greeting"
    assert "does not answer a TLS handshake either" in problem.advice
    assert "Force SMTPS" not in problem.advice
