"""Smoke test of tests.postfix_server: a real Postfix, reached with nothing but smtplib and ssl."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator

import pytest

from tests.postfix_server import PostfixInstance, running_postfix

HOSTNAME = "postfix.gatewaymgr.test"
CLIENT_NAME = "client.gatewaymgr.test"  # for EHLO: smtplib would otherwise ask getfqdn()


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixInstance]:
    with running_postfix(hostname=HOSTNAME) as instance:
        yield instance


class _AtAddress:
    """Dials `address` whatever host name connect() is given, yet verifies TLS against that
    name (smtplib hands `_host` to wrap_socket as server_hostname): no /etc/hosts needed."""

    def __init__(self, address: str, **kwargs) -> None:
        self.address = address
        super().__init__(local_hostname=CLIENT_NAME, timeout=10, **kwargs)

    def connect(self, host: str, port: int = 0, source_address=None):
        self._host = host  # smtplib only records the host given to __init__
        return super().connect(host, port, source_address)

    def _get_socket(self, host, port, timeout):
        return super()._get_socket(self.address, port, timeout)


class SMTP(_AtAddress, smtplib.SMTP):
    pass


class SMTPS(_AtAddress, smtplib.SMTP_SSL):
    pass


def trusting(postfix: PostfixInstance) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=postfix.certificate_pem)


def send(smtp: smtplib.SMTP) -> str:
    """Send one message; return the queue ID from Postfix's reply to DATA."""
    smtp.ehlo_or_helo_if_needed()
    assert smtp.mail("sender@example.com")[0] == 250
    assert smtp.rcpt("recipient@example.org")[0] == 250
    code, reply = smtp.data(b"Subject: harness smoke test\r\n\r\nHello, Postfix.\r\n")
    assert code == 250, reply
    assert b"queued as " in reply, reply
    return reply.decode().rsplit(" ", 1)[1]


def assert_delivered(postfix: PostfixInstance, before: int, queue_id: str) -> None:
    lines = postfix.wait_delivered(before + 1)
    assert any(f" {queue_id}: to=<recipient@example.org>" in line for line in lines), lines


def test_plain_port_offers_no_starttls_and_delivers(postfix: PostfixInstance) -> None:
    before = len(postfix.delivered())
    with SMTP(postfix.address) as smtp:
        code, banner = smtp.connect(HOSTNAME, postfix.plain_port)
        assert code == 220
        assert banner == f"{HOSTNAME} ESMTP Postfix (gatewaymgr test)".encode()
        assert smtp.ehlo()[0] == 250
        assert not smtp.has_extn("starttls")
        queue_id = send(smtp)
    assert_delivered(postfix, before, queue_id)


def test_submission_port_starttls_with_trusted_certificate(postfix: PostfixInstance) -> None:
    before = len(postfix.delivered())
    with SMTP(postfix.address) as smtp:
        assert smtp.connect(HOSTNAME, postfix.submission_port)[0] == 220
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert smtp.starttls(context=trusting(postfix))[0] == 220
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")
        smtp.ehlo()
        assert not smtp.has_extn("starttls")  # offered once, and now in use
        queue_id = send(smtp)
    assert_delivered(postfix, before, queue_id)


def test_smtps_port_wraps_the_connection_in_tls(postfix: PostfixInstance) -> None:
    before = len(postfix.delivered())
    with SMTPS(postfix.address, context=trusting(postfix)) as smtp:
        assert smtp.connect(HOSTNAME, postfix.smtps_port)[0] == 220
        subject = dict(pair[0] for pair in smtp.sock.getpeercert()["subject"])
        assert subject["commonName"] == HOSTNAME
        queue_id = send(smtp)
    assert_delivered(postfix, before, queue_id)


def test_self_signed_certificate_fails_with_system_cas_only(postfix: PostfixInstance) -> None:
    smtp = SMTP(postfix.address)
    try:
        smtp.connect(HOSTNAME, postfix.submission_port)
        smtp.ehlo()
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp.starttls(context=ssl.create_default_context())
    finally:
        smtp.close()
