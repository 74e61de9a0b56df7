"""Interoperability with a real Postfix smtpd on the real port numbers (587 STARTTLS with a
self-signed certificate, 465 wrapper mode, 25 plain), through the stored-settings backend.

AUTH against Postfix with Dovecot SASL is in tests/test_interop_postfix_sasl.py.
"""

from __future__ import annotations

import hashlib
import ssl

import pytest
from django.core.mail import EmailMessage, get_connection

from smtpsettings import store
from smtpsettings.problems import SmtpProblem
from tests.components import missing

BACKEND = "smtpsettings.backends.StoredSettingsBackend"
HOSTNAME = "postfix.gatewaymgr.test"
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def postfix():
    import socket

    from tests.postfix_server import running_postfix

    try:
        address = socket.gethostbyname(HOSTNAME)
    except OSError:
        address = None
    if address != "127.0.0.3":
        missing(f"{HOSTNAME} does not resolve to 127.0.0.3 (add it to /etc/hosts, as .ci/run does)")
    with running_postfix(address="127.0.0.3", hostname=HOSTNAME) as instance:
        yield instance


def pin(pem: str, algorithm: str = "sha256") -> str:
    return hashlib.new(algorithm, ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def send(port: int, *, encryption="auto", options=None, trusted="") -> None:
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port, record.encryption = HOSTNAME, port, encryption
    record.options = {"timeout": 10, **(options or {})}
    record.trusted_certificate = trusted
    record.save()
    message = EmailMessage("Interop", "Hello Postfix.", None, ["someone@example.com"])
    assert get_connection(BACKEND).send_messages([message]) == 1


MATRIX = [
    # (case, port, encryption, options, trust, expected problem kind or None for delivered)
    ("587 verify on, untrusted", 587, "auto", {}, False, "untrusted"),
    ("465 verify on, untrusted", 465, "auto", {}, False, "untrusted"),
    ("25 plain", 25, "auto", {}, False, None),
    ("587 verify_peer false", 587, "auto", {"verify_peer": "false"}, False, None),
    ("465 verify_peer false", 465, "auto", {"verify_peer": "false"}, False, None),
    ("587 trusted certificate", 587, "auto", {}, True, None),
    ("465 trusted certificate", 465, "auto", {}, True, None),
    (
        "587 SHA-256 pin",
        587,
        "auto",
        {"verify_peer": False, "peer_fingerprint": "PIN"},
        False,
        None,
    ),
    ("465 SHA-1 pin", 465, "auto", {"verify_peer": False, "peer_fingerprint": "SHA1"}, False, None),
    (
        "587 wrong pin",
        587,
        "auto",
        {"verify_peer": False, "peer_fingerprint": "ab" * 32},
        False,
        "fingerprint-mismatch",
    ),
    ("587 Force SMTPS", 587, "smtps", {}, True, "wrong-mode"),
    ("25 require_tls", 25, "auto", {"require_tls": True}, False, "starttls-missing"),
]


@pytest.mark.parametrize(
    ("port", "encryption", "options", "trust", "expected"),
    [case[1:] for case in MATRIX],
    ids=[case[0] for case in MATRIX],
)
def test_matrix(postfix, port, encryption, options, trust, expected):
    options = dict(options)
    if options.get("peer_fingerprint") == "PIN":
        options["peer_fingerprint"] = pin(postfix.certificate_pem)
    if options.get("peer_fingerprint") == "SHA1":
        options["peer_fingerprint"] = pin(postfix.certificate_pem, "sha1")
    before = len(postfix.delivered())
    trusted = postfix.certificate_pem if trust else ""
    if expected is None:
        send(port, encryption=encryption, options=options, trusted=trusted)
        assert len(postfix.wait_delivered(before + 1)) == before + 1
    else:
        with pytest.raises(SmtpProblem) as caught:
            send(port, encryption=encryption, options=options, trusted=trusted)
        assert caught.value.kind == expected, str(caught.value)
        assert len(postfix.delivered()) == before


def test_untrusted_postfix_certificate_is_described_for_the_administrator(postfix):
    with pytest.raises(SmtpProblem) as caught:
        send(587)
    problem = caught.value
    assert problem.certificate.names == (HOSTNAME,)
    assert problem.certificate.sha256 in str(problem)
    assert problem.certificate_pem.strip() == postfix.certificate_pem.strip()


def test_postfix_pipelining_carries_a_batch_over_one_connection(postfix):
    before = len(postfix.delivered())
    send(587, trusted=postfix.certificate_pem)
    record = store.load()
    assert record.port == 587
    batch = [EmailMessage(f"Batch {i}", "Body", None, [f"u{i}@example.com"]) for i in range(30)]
    assert get_connection(BACKEND).send_messages(batch) == 30
    assert len(postfix.wait_delivered(before + 31)) == before + 31
