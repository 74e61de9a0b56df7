"""The transport against real aiosmtpd servers: what the server saw, and what we say."""

from __future__ import annotations

import hashlib
import socket
import ssl

import pytest

from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, SmtpConfig, plan
from smtpsettings.problems import SmtpProblem
from smtpsettings.transport import SmtpTransport, ehlo_name, wire_format
from tests.smtpservers import (
    PASSWORD,
    TEST_HOST,
    USERNAME,
    Recorder,
    certificates,
    free_port,
    require_test_host,
    self_signed,
    smtp_server,
)

MESSAGE = b"From: gw@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def transport_for(server, *, encryption="auto", user="", password="", trusted="", **options):
    config = SmtpConfig(
        TEST_HOST,
        server.port if server else free_port(),
        Encryption(encryption),
        user,
        parse_options({"timeout": 5, **options}),
        trusted,
    )
    return SmtpTransport(plan(config), password)


def send_one(transport, recipients=("bob@example.com",)):
    try:
        return transport.send("gw@example.com", list(recipients), MESSAGE)
    finally:
        transport.close()


def problem_of(transport, recipients=("bob@example.com",)) -> SmtpProblem:
    with pytest.raises(SmtpProblem) as caught:
        send_one(transport, recipients)
    return caught.value


# -- encryption and trust -----------------------------------------------------------------


def test_starttls_with_a_trusted_ca_delivers_over_tls():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        send_one(transport_for(server, trusted=certs.ca_pem))
    assert [m.rcpt_tos for m in server.messages] == [["bob@example.com"]]
    assert server.messages[0].message["Subject"] == "hi"
    assert len(server.recorder.ehlo_names) == 2  # before and after STARTTLS


def test_self_signed_certificate_stored_as_trusted_delivers_with_verification_on():
    certs = self_signed()
    with smtp_server(mode="starttls", certs=certs) as server:
        send_one(transport_for(server, trusted=certs.pem))
    assert len(server.messages) == 1


def test_servers_own_certificate_issued_by_an_unknown_ca_can_be_trusted():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        send_one(transport_for(server, trusted=certs.pem))  # the leaf, not its CA
    assert len(server.messages) == 1


def test_untrusted_certificate_is_refused_and_described():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        problem = problem_of(transport_for(server))
    assert server.messages == []
    assert problem.kind == "untrusted" and problem.step == "starttls"
    assert "not signed by an authority this machine trusts" in problem.advice
    assert problem.certificate.names == (TEST_HOST,)
    assert problem.certificate.sha256 in problem.advice
    assert "issuer OU=Testing CA" in problem.advice
    assert problem.certificate_pem.strip() == certs.pem.strip()
    assert problem.temporary


def test_verify_peer_false_delivers_despite_an_untrusted_certificate():
    with smtp_server(mode="starttls") as server:
        send_one(transport_for(server, verify_peer="false"))
    assert len(server.messages) == 1


def test_wrong_host_name_names_the_certificates_names():
    certs = certificates(hostname="other.example.com")
    with smtp_server(mode="starttls", certs=certs) as server:
        problem = problem_of(transport_for(server, trusted=certs.ca_pem))
    assert problem.kind == "hostname-mismatch"
    assert f"is for other.example.com, not for {TEST_HOST}" in problem.advice
    assert server.messages == []


def test_expired_certificate_says_when_it_expired():
    certs = certificates(expired=True)
    with smtp_server(mode="starttls", certs=certs) as server:
        problem = problem_of(transport_for(server, trusted=certs.ca_pem))
    assert problem.kind == "expired"
    assert "expired on 2021-01-01" in problem.advice


def test_smtps_delivers_with_tls_from_the_first_byte():
    certs = certificates()
    with smtp_server(mode="smtps", certs=certs) as server:
        send_one(transport_for(server, encryption="smtps", trusted=certs.ca_pem))
    assert len(server.messages) == 1


def test_smtps_against_a_starttls_port_names_the_fix():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        problem = problem_of(transport_for(server, encryption="smtps", trusted=certs.ca_pem))
    assert problem.kind == "wrong-mode"
    assert "does not speak SMTPS on this port" in problem.advice
    assert f"choose Encryption: Automatic on port {server.port}" in problem.advice


def test_starttls_against_an_smtps_port_names_the_fix():
    certs = certificates()
    with smtp_server(mode="smtps", certs=certs) as server:
        problem = problem_of(transport_for(server, timeout=1, trusted=certs.ca_pem))
    assert problem.kind == "wrong-mode"
    assert "expects TLS from the first byte (SMTPS): choose Force SMTPS" in problem.advice


def test_required_starttls_not_offered_fails_before_anything_is_sent():
    with smtp_server(mode="plain") as server:
        problem = problem_of(transport_for(server))
    assert problem.kind == "starttls-missing"
    assert "does not offer STARTTLS, which is required" in problem.advice
    assert server.messages == [] and server.recorder.mail_options == []


def test_auto_tls_false_sends_plain():
    with smtp_server(mode="plain") as server:
        send_one(transport_for(server, auto_tls=False))
    assert len(server.messages) == 1


@pytest.mark.parametrize("algorithm", ["sha256", "sha1", "md5"])
def test_fingerprint_pin_matches(algorithm):
    certs = self_signed()
    der = ssl.PEM_cert_to_DER_cert(certs.pem)
    digest = hashlib.new(algorithm, der).hexdigest().upper()
    pin = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
    with smtp_server(mode="starttls", certs=certs) as server:
        send_one(transport_for(server, verify_peer=False, peer_fingerprint=pin))
    assert len(server.messages) == 1


def test_wrong_fingerprint_pin_fails_before_anything_is_sent():
    with smtp_server(mode="starttls") as server:
        problem = problem_of(transport_for(server, verify_peer=False, peer_fingerprint="ab" * 32))
    assert problem.kind == "fingerprint-mismatch"
    assert "does not match peer_fingerprint" in problem.advice
    assert server.messages == []


# -- authentication ---------------------------------------------------------------------------


def test_auth_over_starttls_signs_in():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        transport = transport_for(server, user=USERNAME, password=PASSWORD, trusted=certs.ca_pem)
        send_one(transport)
    assert server.recorder.logins == [f"PLAIN {USERNAME}"]
    assert transport.auth_mechanism == "PLAIN"
    assert len(server.messages) == 1


def test_refused_password_is_explained_with_the_servers_reply():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        problem = problem_of(
            transport_for(server, user=USERNAME, password="wrong", trusted=certs.ca_pem)
        )
    assert problem.kind == "auth-refused"
    assert problem.reply[0] == 535
    assert "refused the user name or password for alice" in problem.advice
    assert "wrong" not in str(problem)
    assert server.messages == []


def test_password_is_never_sent_unencrypted_to_a_remote_host():
    with smtp_server(mode="plain", auth=True) as server:
        problem = problem_of(
            transport_for(server, user=USERNAME, password=PASSWORD, auto_tls=False)
        )
    assert problem.kind == "password-unencrypted"
    assert "port 587 (STARTTLS), port 465 or Force SMTPS" in problem.advice
    assert server.recorder.logins == [] and server.messages == []


def test_auth_not_offered_says_to_leave_user_blank():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        problem = problem_of(
            transport_for(server, user=USERNAME, password=PASSWORD, trusted=certs.ca_pem)
        )
    assert problem.kind == "auth-missing"
    assert "Leave User blank" in problem.advice


def test_blank_user_skips_authentication():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        send_one(transport_for(server, trusted=certs.ca_pem))
    assert server.recorder.logins == [] and len(server.messages) == 1


# -- EHLO, timeouts, connection errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("local_domain", "seen"),
    [
        ("gw.example.com", "gw.example.com"),
        ("192.0.2.7", "[192.0.2.7]"),
        ("2001:db8::7", "[IPv6:2001:db8::7]"),
    ],
)
def test_local_domain_is_the_ehlo_name(local_domain, seen):
    with smtp_server() as server:
        send_one(transport_for(server, auto_tls=False, local_domain=local_domain))
    assert server.recorder.ehlo_names == [seen]


def test_default_ehlo_name_is_this_machines_name():
    assert ehlo_name(None) == socket.getfqdn()


def test_source_ip_binds_the_local_address():
    with smtp_server() as server:
        transport = transport_for(server, auto_tls=False, source_ip="127.0.0.1")
        transport.open()
        assert transport._smtp.sock.getsockname()[0] == "127.0.0.1"
        send_one(transport)
    assert len(server.messages) == 1


def test_unresolvable_host_is_explained():
    config = SmtpConfig("no-such-host.gatewaymgr.test", 587, options=parse_options({}))
    with pytest.raises(SmtpProblem) as caught:
        SmtpTransport(plan(config)).open()
    assert caught.value.kind == "resolve"
    assert "does not resolve" in caught.value.advice


def test_refused_connection_is_explained():
    problem = problem_of(transport_for(None))
    assert problem.kind == "refused"
    assert "Nothing accepts connections on smtp.gatewaymgr.test:" in problem.advice


def test_connect_timeout_is_explained():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the accept queue so the next SYN goes unanswered
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    config = SmtpConfig(TEST_HOST, port, options=parse_options({"timeout": 1}))
    try:
        with pytest.raises(SmtpProblem) as caught:
            SmtpTransport(plan(config)).open()
    finally:
        for sock in [*fillers, listener]:
            sock.close()
    assert caught.value.kind == "timeout"
    assert "within 1 seconds" in caught.value.advice


# -- the message itself ---------------------------------------------------------------------


def test_sender_refused_mentions_an_existing_address():
    recorder = Recorder(refuse_sender="553 5.7.1 Sender address rejected: not owned by user")
    with smtp_server(recorder=recorder, mode="plain") as server:
        problem = problem_of(transport_for(server, auto_tls=False))
    assert problem.kind == "sender-refused" and not problem.temporary
    assert "refused the sender address gw@example.com" in problem.advice
    assert "553 5.7.1 Sender address rejected" in str(problem)


def test_one_refused_recipient_does_not_stop_the_others():
    recorder = Recorder(refuse_recipients={"b@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        refused = send_one(
            transport_for(server, auto_tls=False),
            ["a@example.com", "b@example.com", "c@example.com"],
        )
    assert refused == {"b@example.com": (550, "5.1.1 No such user")}
    assert server.messages[0].rcpt_tos == ["a@example.com", "c@example.com"]


def test_all_recipients_refused_is_a_problem():
    recorder = Recorder(refuse_recipients={"b@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        problem = problem_of(transport_for(server, auto_tls=False), ["b@example.com"])
    assert problem.kind == "recipients-refused"
    assert problem.refused == {"b@example.com": (550, "5.1.1 No such user")}
    assert server.messages == []


def test_message_too_large():
    with smtp_server(data_size_limit=50) as server:
        problem = problem_of(transport_for(server, auto_tls=False))
    assert problem.kind == "too-large"
    assert "too large for this server" in problem.advice


def test_temporary_refusal_is_temporary_and_the_connection_stays_usable():
    recorder = Recorder(data_replies=["451 4.3.0 Try again later"])
    with smtp_server(recorder=recorder) as server:
        transport = transport_for(server, auto_tls=False)
        with pytest.raises(SmtpProblem) as caught:
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        assert caught.value.temporary and caught.value.reply[0] == 451
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert len(server.messages) == 1
    assert server.recorder.connections == 1


def test_dots_and_line_ends_survive_the_trip():
    body = b"Subject: dots\n\n.leading dot\n..two\nbare\rcr\n."
    assert wire_format(body).endswith(b"\r\n..\r\n.\r\n")
    with smtp_server() as server:
        transport = transport_for(server, auto_tls=False)
        transport.send("gw@example.com", ["bob@example.com"], body)
        transport.close()
    received = server.messages[0].data.replace(b"\r\n", b"\n")
    assert b"\n.leading dot\n..two\nbare\ncr\n." in received


# -- a long-lived transport -----------------------------------------------------------------


class FakeTime:
    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def long_lived(server, **options) -> tuple[SmtpTransport, FakeTime]:
    fake = FakeTime()
    config = SmtpConfig(
        TEST_HOST, server.port, options=parse_options({"auto_tls": False, **options})
    )
    return SmtpTransport(plan(config), clock=fake.clock, sleep=fake.sleep), fake


def test_one_transport_keeps_its_connection_across_sends():
    with smtp_server() as server:
        transport, _ = long_lived(server)
        for _ in range(5):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.connections == 1 and len(server.messages) == 5


def test_ping_threshold_sends_noop_after_idleness():
    with smtp_server() as server:
        transport, fake = long_lived(server, ping_threshold=10)
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        fake.now += 5
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        assert server.recorder.noops == 0
        fake.now += 11
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.noops == 1
    assert server.recorder.connections == 1 and len(server.messages) == 3


def test_failed_noop_reconnects_and_sends_anyway():
    recorder = Recorder(noop_reply="421 4.4.2 Idle too long, closing")
    with smtp_server(recorder=recorder) as server:
        transport, fake = long_lived(server, ping_threshold=10)
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        fake.now += 60
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.noops == 1
    assert server.recorder.connections == 2 and len(server.messages) == 2


def test_restart_threshold_reconnects_after_n_messages_with_the_sleep():
    with smtp_server() as server:
        transport, fake = long_lived(server, restart_threshold=2, restart_threshold_sleep=1.5)
        for _ in range(5):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.connections == 3 and len(server.messages) == 5
    assert fake.sleeps == [1.5, 1.5]


def test_restart_threshold_zero_never_reconnects():
    with smtp_server() as server:
        transport, _ = long_lived(server, restart_threshold=0)
        for _ in range(150):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.connections == 1 and len(server.messages) == 150


def test_default_restart_threshold_is_100():
    with smtp_server() as server:
        transport, _ = long_lived(server)
        for _ in range(150):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.connections == 2


def test_max_per_second_throttles():
    with smtp_server() as server:
        transport, fake = long_lived(server, max_per_second=4)
        for _ in range(3):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert fake.sleeps == [0.25, 0.25]
    assert len(server.messages) == 3


def test_a_connection_that_broke_is_not_reused():
    with smtp_server() as server:
        transport, _ = long_lived(server)
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport._smtp.sock.shutdown(socket.SHUT_RDWR)  # the network drops the connection
        with pytest.raises(SmtpProblem):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        assert not transport.is_open
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
        transport.close()
    assert server.recorder.connections == 2 and len(server.messages) == 2


def test_repr_never_shows_the_password():
    config = SmtpConfig(TEST_HOST, 587, username=USERNAME, options=parse_options({}))
    transport = SmtpTransport(plan(config), PASSWORD)
    assert PASSWORD not in repr(transport) and PASSWORD not in str(vars(transport).keys())
