"""TLS client certificates against a real Postfix smtpd that asks for one on 587
(smtpd_tls_ask_ccert) and requires one issued by its CA on 465 (smtpd_tls_req_ccert).

Postfix, unlike Python's asyncio servers, completes the handshake and then answers 421 with its
reason; its log says whether it verified the certificate ("Trusted TLS connection").
"""

from __future__ import annotations

import socket

import pytest
import trustme

from smtpsettings.certificates import parse_client_certificate
from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, SmtpConfig, plan
from smtpsettings.problems import SmtpProblem
from smtpsettings.transport import SmtpTransport
from tests.components import missing

HOSTNAME = "postfix.gatewaymgr.test"
CLIENT_CA = trustme.CA()


@pytest.fixture(scope="module")
def postfix():
    from tests.postfix_server import running_postfix

    try:
        address = socket.gethostbyname(HOSTNAME)
    except OSError:
        address = None
    if address != "127.0.0.3":
        missing(f"{HOSTNAME} does not resolve to 127.0.0.3 (add it to /etc/hosts, as .ci/run does)")
    ca_pem = CLIENT_CA.cert_pem.bytes().decode()
    with running_postfix(address="127.0.0.3", hostname=HOSTNAME, client_ca_pem=ca_pem) as instance:
        yield instance


def client_from(ca: trustme.CA):
    leaf = ca.issue_cert("gateway.example.com", common_name="gateway-client")
    return parse_client_certificate(leaf.private_key_and_cert_chain_pem.bytes())


def tls_log(postfix, kind: str) -> int:
    """How many connections Postfix logged as "<kind> TLS connection established"."""
    text = postfix.log_path.read_text(errors="replace")
    return text.count(f"{kind} TLS connection established")


def send(postfix, port: int, client=None, steps=None) -> None:
    config = SmtpConfig(
        HOSTNAME,
        port,
        Encryption.AUTOMATIC,
        options=parse_options({"timeout": 10}),
        trusted_certificate=postfix.certificate_pem,
        client_certificate=client.certificate_pem if client else "",
    )
    transport = SmtpTransport(
        plan(config),
        client_key=client.key_pem if client else "",
        observer=steps.append if steps is not None else None,
    )
    try:
        transport.send(
            "gateway@example.com", ["someone@example.com"], b"Subject: mTLS\r\n\r\nHi\r\n"
        )
    finally:
        transport.close()


@pytest.mark.parametrize("port", [465, 587])
def test_postfix_verifies_the_presented_certificate_and_delivers(postfix, port):
    client = client_from(CLIENT_CA)
    delivered, trusted = len(postfix.delivered()), tls_log(postfix, "Trusted")
    steps = []
    send(postfix, port, client, steps)
    postfix.wait_delivered(delivered + 1)
    assert tls_log(postfix, "Trusted") == trusted + 1  # Postfix verified our certificate
    by_name = {step.name: step for step in steps}
    tls = by_name["tls" if port == 465 else "starttls"]
    assert f"; presented client certificate {client.info.subject}" in tls.detail
    assert by_name["client-certificate"].detail.startswith(
        f"the server accepted {client.info.subject}"
    )


def test_postfix_that_requires_a_certificate_explains_its_absence(postfix):
    anonymous = tls_log(postfix, "Anonymous")
    with pytest.raises(SmtpProblem) as caught:
        send(postfix, 465)
    problem = caught.value
    assert tls_log(postfix, "Anonymous") == anonymous + 1
    assert problem.kind == "client-certificate-required" and problem.step == "greeting"
    assert "without a trusted TLS client certificate, and none is configured" in problem.advice
    assert problem.server_reply.startswith("421 4.7.1")
    assert "No client certificate presented" in problem.server_reply


def test_postfix_refuses_a_certificate_from_another_ca_and_says_which(postfix):
    client = client_from(trustme.CA())
    untrusted = tls_log(postfix, "Untrusted")
    with pytest.raises(SmtpProblem) as caught:
        send(postfix, 465, client)
    problem = caught.value
    assert tls_log(postfix, "Untrusted") == untrusted + 1  # received, and not verified
    assert problem.kind == "client-certificate-refused"
    assert f"The server refused to go on with the client certificate {client.info.subject}" in (
        problem.advice
    )
    assert client.info.sha256 in problem.advice
    assert "Client certificate not trusted" in problem.server_reply
