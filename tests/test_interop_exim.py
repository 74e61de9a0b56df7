"""Interoperability with a real Exim 4 (Debian's exim4-daemon-light, unpacked, run privately
with -C on 127.0.0.4: tests/exim_server.py), through the stored-settings backend: 25 as a plain
relay, 587 with STARTTLS and AUTH, 465 with TLS from the first byte and AUTH. Each case reads
what Exim really received: its main log's arrival line (protocol, TLS, authenticator and user)
and the message as delivered to its mailbox file.
"""

from __future__ import annotations

import hashlib
import mailbox
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator
from email.utils import make_msgid

import pytest
from django.core.mail import EmailMessage, get_connection

from smtpsettings import store
from smtpsettings.problems import SmtpProblem
from tests.components import missing
from tests.exim_server import SESSION_END, running_exim

BACKEND = "smtpsettings.backends.StoredSettingsBackend"
HOSTNAME = "exim.gatewaymgr.test"
ADDRESS = "127.0.0.4"
CLIENT_NAME = "client.gatewaymgr.test"
pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module", params=[("PLAIN", "LOGIN"), ("LOGIN",)], ids=["PLAIN", "LOGIN"])
def exim(request) -> Iterator:
    """Exim offering PLAIN LOGIN (the product signs in with PLAIN), then LOGIN alone."""
    try:
        address = socket.gethostbyname(HOSTNAME)
    except OSError:
        address = None
    if address != ADDRESS:
        missing(f"{HOSTNAME} does not resolve to {ADDRESS} (add it to /etc/hosts, as .ci/run does)")
    with running_exim(address=ADDRESS, hostname=HOSTNAME, mechanisms=request.param) as instance:
        yield instance


def configure(exim, port: int, *, password: str = "", options=None, trust: bool = True) -> None:
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.sender_name = "Gateway Manager"
    record.host, record.port, record.encryption = HOSTNAME, port, "auto"
    record.options = {"timeout": 10, **(options or {})}
    # Verified TLS where there is TLS: the product sends no password to a remote host over
    # anything less. Port 25 offers none, where a trusted certificate would stop the sending.
    trust = trust and port != exim.plain_port
    record.trusted_certificate = exim.certificate_pem if trust else ""
    record.auth_method = "password" if password else "none"
    record.username = exim.username if password else ""
    if password:
        record.seal_password(password)
    record.save()


def message(subject: str, to: str = "someone@example.com") -> EmailMessage:
    return EmailMessage(
        subject,
        f"Hello Exim: {subject}.",
        None,
        [to],
        headers={"Message-ID": make_msgid(domain="gatewaymgr.test")},
    )


def delivered(exim, message_id: str):
    """The message with this Message-ID as Exim wrote it to the mailbox."""
    found = [m for m in mailbox.mbox(exim.mailbox) if m["Message-ID"] == message_id]
    assert len(found) == 1, f"{len(found)} copies of {message_id} in the mailbox"
    return found[0]


def signed_in(exim) -> str:
    """How the main log names a sign-in: the authenticator (the first mechanism offered, which
    the product picks) and the user."""
    return f"{exim.mechanisms[0].lower()}:{exim.username}"


def arrival(exim, before: int) -> str:
    (line,) = exim.received()[before:]
    return line


def ehlo_features(exim, port: int, *, starttls: bool = False) -> dict[str, str]:
    context = ssl._create_unverified_context()  # what is offered, not whom we trust
    if port == exim.smtps_port:
        smtp = smtplib.SMTP_SSL(exim.address, port, local_hostname=CLIENT_NAME, context=context)
    else:
        smtp = smtplib.SMTP(exim.address, port, local_hostname=CLIENT_NAME)
    with smtp:
        smtp.ehlo()
        if starttls:
            smtp.starttls(context=context)
            smtp.ehlo()
        return dict(smtp.esmtp_features)


@pytest.mark.parametrize(
    ("port", "starttls", "offers", "lacks"),
    [
        (25, False, {"pipelining", "chunking"}, {"starttls", "auth"}),
        (587, False, {"pipelining", "chunking", "starttls"}, {"auth"}),
        (587, True, {"pipelining", "chunking", "auth"}, {"starttls"}),
        (465, False, {"pipelining", "chunking", "auth"}, {"starttls"}),
    ],
    ids=["25", "587 before STARTTLS", "587 after STARTTLS", "465"],
)
def test_exim_offers(exim, port, starttls, offers, lacks):
    features = ehlo_features(exim, port, starttls=starttls)
    assert offers <= features.keys()
    assert not lacks & features.keys()
    if "auth" in offers:
        assert features["auth"].split() == list(exim.mechanisms)


def test_plain_relay_on_25_receives_the_message_as_sent(exim):
    before, completed = len(exim.received()), len(exim.completed())
    configure(exim, 25)
    sent = message("Plain relay")
    assert get_connection(BACKEND).send_messages([sent]) == 1

    exim.wait_delivered(completed + 1)
    line = arrival(exim, before)
    assert "<= gateway@example.com" in line and "P=esmtp " in line
    assert " X=" not in line and " A=" not in line  # no TLS was offered, no sign-in needed
    received = delivered(exim, sent.extra_headers["Message-ID"])
    assert received["From"] == "Gateway Manager <gateway@example.com>"
    assert received["Subject"] == "Plain relay"
    assert received["To"] == "someone@example.com"
    assert received.get_payload().strip() == "Hello Exim: Plain relay."


@pytest.mark.parametrize("port", [587, 465])
def test_password_over_verified_tls_is_received_signed_in(exim, port):
    before, completed = len(exim.received()), len(exim.completed())
    configure(exim, port, password=exim.password)
    sent = message(f"Signed in on {port}")
    assert get_connection(BACKEND).send_messages([sent]) == 1

    exim.wait_delivered(completed + 1)
    line = arrival(exim, before)
    # esmtpsa: ESMTP, secured by TLS, authenticated; A=authenticator:user.
    assert "P=esmtpsa" in line and " X=TLS1.3:" in line
    assert f" A={signed_in(exim)}" in line
    assert delivered(exim, sent.extra_headers["Message-ID"])["Subject"] == f"Signed in on {port}"
    assert exim.failed_logins() == []


@pytest.mark.parametrize("port", [587, 465])
def test_wrong_password_is_refused_once_and_nothing_is_received(exim, port):
    before, refused = len(exim.received()), len(exim.failed_logins())
    sessions = len(exim.lines(SESSION_END))
    configure(exim, port, password="not the password")

    with pytest.raises(SmtpProblem) as caught:
        get_connection(BACKEND).send_messages([message("Wrong password")])
    exim.wait_lines(SESSION_END, sessions + 1)  # all of that session is in the log

    assert caught.value.kind == "auth-refused", str(caught.value)
    assert "refused the user name or password for alice" in str(caught.value)
    # One failed sign-in: after a 535 the product does not try LOGIN with the same password.
    failures = exim.failed_logins()[refused:]
    assert len(failures) == 1, failures
    (failure,) = failures
    assert f"{exim.mechanisms[0].lower()} authenticator failed" in failure
    assert "535 Incorrect authentication data (set_id=alice)" in failure
    assert exim.received()[before:] == []


def test_a_batch_is_pipelined_over_one_connection_and_all_of_it_received(exim):
    before, completed = len(exim.received()), len(exim.completed())
    connections = len(re.findall(r"SMTP connection from .* count", exim.log()))
    configure(exim, 587, password=exim.password)
    batch = [message(f"Batch {i}", to=f"u{i}@example.com") for i in range(20)]
    assert get_connection(BACKEND).send_messages(batch) == 20

    exim.wait_delivered(completed + 20)
    arrivals = exim.received()[before:]
    assert len(arrivals) == 20
    assert all(f" A={signed_in(exim)}" in line for line in arrivals)
    # log_selector +pipelining: "L." when the client pipelined its commands, "L.-" when
    # PIPELINING was offered and not used (as by plain smtplib).
    assert all(" L. " in line for line in arrivals), arrivals[0]
    assert len(re.findall(r"SMTP connection from .* count", exim.log())) == connections + 1
    ids = {m["Message-ID"] for m in mailbox.mbox(exim.mailbox)}
    assert {m.extra_headers["Message-ID"] for m in batch} <= ids


def pin(pem: str) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


@pytest.mark.parametrize("port", [587, 465])
def test_exims_untrusted_certificate_stops_the_password_before_auth(exim, port):
    before, refused = len(exim.received()), len(exim.failed_logins())
    tls_errors = len(exim.lines("TLS error on connection"))
    # Exim's self-signed certificate, verified against the system's CAs.
    configure(exim, port, password=exim.password, trust=False)

    with pytest.raises(SmtpProblem) as caught:
        get_connection(BACKEND).send_messages([message("Untrusted")])
    exim.wait_lines("TLS error on connection", tls_errors + 1)  # the product hung up in TLS

    assert caught.value.kind == "untrusted", str(caught.value)
    assert caught.value.certificate.names == (HOSTNAME,)
    assert exim.failed_logins()[refused:] == [] and exim.received()[before:] == []


def test_a_pinned_certificate_on_465_is_received_over_tls(exim):
    before, completed = len(exim.received()), len(exim.completed())
    configure(
        exim,
        465,
        password=exim.password,
        options={"verify_peer": False, "peer_fingerprint": pin(exim.certificate_pem)},
        trust=False,
    )
    sent = message("Pinned")
    assert get_connection(BACKEND).send_messages([sent]) == 1

    exim.wait_delivered(completed + 1)
    line = arrival(exim, before)
    assert "P=esmtpsa" in line and " X=TLS1.3:" in line and f" A={signed_in(exim)}" in line
    assert delivered(exim, sent.extra_headers["Message-ID"])["Subject"] == "Pinned"
