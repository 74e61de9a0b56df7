"""TLS client certificates (mutual TLS): reading the PEM, presenting it on STARTTLS and SMTPS
to real servers that require one, what the transcript says, and that the key never shows."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from django.core.management import call_command

from smtpsettings import store
from smtpsettings.certificates import InvalidCertificate, parse_client_certificate
from smtpsettings.diagnostics import send_test_email
from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, SmtpConfig, plan
from smtpsettings.problems import SmtpProblem
from smtpsettings.tls import load_client_certificate
from smtpsettings.transport import SmtpTransport
from tests.smtpservers import (
    TEST_HOST,
    Certificates,
    Recorder,
    certificates,
    require_test_host,
    smtp_server,
)

MESSAGE = b"From: gw@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
CLIENT_NAME = "gateway-client"


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


@dataclass
class SeenRecorder(Recorder):
    """Also records the client certificate each delivered message came with, as the server
    verified it."""

    client_names: list[str | None] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):
        peer = server.transport.get_extra_info("peercert") or {}
        subject = dict(pair[0] for pair in peer.get("subject", ()))
        self.client_names.append(subject.get("commonName"))
        return await super().handle_DATA(server, session, envelope)


def client_pem(ca: trustme.CA, *, name: str = CLIENT_NAME, **kwargs) -> str:
    """What an administrator uploads: the client certificate and its private key."""
    leaf = ca.issue_cert(f"{name}.example.com", common_name=name, **kwargs)
    return leaf.cert_chain_pems[0].bytes().decode() + leaf.private_key_pem.bytes().decode()


def requiring_server(client_ca: trustme.CA, *, tls12: bool = False) -> Certificates:
    """A server certificate, and a server context that demands a client certificate issued by
    `client_ca`."""
    certs = certificates()
    certs.server.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(certs.server)
    if tls12:  # the refusal then comes inside the handshake, not after it
        certs.server.maximum_version = ssl.TLSVersion.TLSv1_2
    return certs


def transport(server, certs, client=None, *, mode="starttls", steps=None) -> SmtpTransport:
    config = SmtpConfig(
        TEST_HOST,
        server.port,
        Encryption.FORCE_SMTPS if mode == "smtps" else Encryption.AUTOMATIC,
        options=parse_options({"timeout": 5}),
        trusted_certificate=certs.ca_pem,
        client_certificate=client.certificate_pem if client else "",
    )
    return SmtpTransport(
        plan(config),
        client_key=client.key_pem if client else "",
        observer=steps.append if steps is not None else None,
    )


def send_one(transport: SmtpTransport) -> None:
    try:
        transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
    finally:
        transport.close()


def problem_of(transport: SmtpTransport) -> SmtpProblem:
    with pytest.raises(SmtpProblem) as caught:
        send_one(transport)
    return caught.value


MODES = ["starttls", "smtps"]


# -- reading the PEM ---------------------------------------------------------------------


def test_a_certificate_with_its_key_is_read_in_either_order_with_its_chain():
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("gw.example.com", common_name=CLIENT_NAME)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes().decode()

    for text in (chain + key, key + chain, (key + chain).encode()):
        parsed = parse_client_certificate(text)
        assert parsed.info.subject.startswith(f"CN={CLIENT_NAME},")
        assert parsed.certificate_pem.count("BEGIN CERTIFICATE") == 2  # the intermediate kept
        assert parsed.certificate_pem.startswith(leaf.cert_chain_pems[0].bytes().decode())
        assert "PRIVATE KEY" not in parsed.certificate_pem
        assert parsed.key_pem.startswith("-----BEGIN PRIVATE KEY-----")
        assert parsed.warnings == ()
    certificate_pem, key_pem, info = parsed  # the (certificate, key, info) the callers unpack
    assert certificate_pem == parsed.certificate_pem
    assert info.sha256 in repr(parsed) and key_pem not in repr(parsed)


def test_a_certificate_without_its_key_is_refused_in_words():
    leaf = trustme.CA().issue_cert("gw.example.com")
    with pytest.raises(InvalidCertificate, match="certificate but no private key"):
        parse_client_certificate(leaf.cert_chain_pems[0].bytes().decode())


def test_a_key_without_a_certificate_is_refused_in_words():
    leaf = trustme.CA().issue_cert("gw.example.com")
    with pytest.raises(InvalidCertificate, match="private key but no certificate"):
        parse_client_certificate(leaf.private_key_pem.bytes().decode())


def test_text_that_is_no_pem_at_all_is_refused_in_words():
    with pytest.raises(InvalidCertificate, match="not a PEM certificate with its key"):
        parse_client_certificate("hello")
    with pytest.raises(InvalidCertificate, match="openssl pkcs12"):
        parse_client_certificate(b"\x30\x82\xff\xfe binary PKCS#12")


def test_a_key_that_belongs_to_another_certificate_is_refused_naming_the_certificate():
    ca = trustme.CA()
    mine, other = ca.issue_cert("a.example.com"), ca.issue_cert("b.example.com")
    text = mine.cert_chain_pems[0].bytes().decode() + other.private_key_pem.bytes().decode()
    with pytest.raises(InvalidCertificate) as caught:
        parse_client_certificate(text)
    assert "does not belong to the certificate" in str(caught.value)
    assert parse_client_certificate(mine.private_key_and_cert_chain_pem.bytes()).info.sha256 in (
        str(caught.value)
    )


@pytest.mark.parametrize("style", ["pkcs8", "traditional"])
def test_a_key_with_a_passphrase_is_refused_saying_how_to_export_it_without(style):
    leaf = trustme.CA().issue_cert("gw.example.com")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    private_format = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
    }[style]
    locked = key.private_bytes(
        serialization.Encoding.PEM,
        private_format,
        serialization.BestAvailableEncryption(b"secret passphrase"),
    ).decode()
    with pytest.raises(InvalidCertificate) as caught:
        parse_client_certificate(leaf.cert_chain_pems[0].bytes().decode() + locked)
    assert "protected by a passphrase" in str(caught.value)
    assert "openssl pkey -in client.key -out client-open.key" in str(caught.value)


def test_an_expired_certificate_is_accepted_and_said_to_be_expired():
    text = client_pem(
        trustme.CA(),
        not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
    )
    parsed = parse_client_certificate(text)
    (warning,) = parsed.warnings
    assert f"{parsed.info.subject} expired on 2021-01-01" in warning


# -- the plan sentence ---------------------------------------------------------------------


def test_the_plan_sentence_names_the_client_certificate_and_when_it_cannot_be_presented():
    client = parse_client_certificate(client_pem(trustme.CA()))
    tls = plan(SmtpConfig("mail.example.com", 587, client_certificate=client.certificate_pem))
    name = client.info.subject
    assert f"presents the client certificate {name} when the server asks for one" in (
        tls.describe()
    )
    assert tls.client_certificate_info == client.info
    plain = plan(
        SmtpConfig(
            "mail.example.com",
            25,
            options=parse_options({"auto_tls": False}),  # port 25 alone now tries STARTTLS
            client_certificate=client.certificate_pem,
        )
    )
    assert f"cannot present the client certificate {name} without TLS" in plain.describe()
    assert "client certificate" not in plan(SmtpConfig("mail.example.com", 587)).describe()


# -- real servers that require a client certificate ----------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_the_client_certificate_is_presented_and_the_server_sees_it(mode):
    client_ca = trustme.CA()
    certs = requiring_server(client_ca)
    client = parse_client_certificate(client_pem(client_ca))
    steps = []
    with smtp_server(mode=mode, certs=certs, recorder=SeenRecorder()) as server:
        send_one(transport(server, certs, client, mode=mode, steps=steps))
    assert len(server.messages) == 1
    assert server.recorder.client_names == [CLIENT_NAME]
    by_name = {step.name: step for step in steps}
    tls = by_name["tls" if mode == "smtps" else "starttls"]
    about = f"{client.info.subject} (SHA-256 {client.info.sha256})"
    assert client.info.subject.startswith(f"CN={CLIENT_NAME},")
    assert tls.detail.endswith(f"; presented client certificate {about}")
    accepted = by_name["client-certificate"]
    assert accepted.ok and accepted.label == "Client certificate"
    assert accepted.detail == f"the server accepted {about}"


@pytest.mark.parametrize("mode", MODES)
def test_without_a_client_certificate_the_server_that_requires_one_is_explained(mode):
    certs = requiring_server(trustme.CA())
    with smtp_server(mode=mode, certs=certs, recorder=SeenRecorder()) as server:
        problem = problem_of(transport(server, certs, mode=mode))
    assert server.messages == []
    # Python's asyncio servers close the connection without a TLS alert.
    assert problem.kind == "client-certificate-required"
    assert (
        "The server asked for a TLS client certificate and closed the connection when none "
        "came: it requires one, and none is configured." in problem.advice
    )
    assert "--client-certificate FILE" in problem.advice
    assert problem.server_reply == "connection closed after the TLS handshake"
    assert problem.temporary  # queued mail waits for the fix


# With TLS 1.2 the server refuses inside the handshake (aiosmtpd's own start-up probe cannot
# reach an SMTPS server that demands a certificate under TLS 1.2, so STARTTLS only).
@pytest.mark.parametrize(
    ("mode", "tls12"), [("starttls", False), ("smtps", False), ("starttls", True)]
)
def test_a_client_certificate_from_another_ca_is_refused_and_explained(mode, tls12):
    certs = requiring_server(trustme.CA(), tls12=tls12)
    stranger = trustme.CA()
    client = parse_client_certificate(client_pem(stranger))
    steps = []
    with smtp_server(mode=mode, certs=certs, recorder=SeenRecorder()) as server:
        problem = problem_of(transport(server, certs, client, mode=mode, steps=steps))
    assert server.messages == []
    assert problem.kind == "client-certificate-refused"
    assert (
        "The server closed the connection right after receiving the client certificate "
        f"{client.info.subject} (issuer {client.info.issuer}" in problem.advice
    )
    assert client.info.sha256 in problem.advice
    assert "most likely because it does not trust its issuer" in problem.advice
    assert f"trust {client.info.issuer} for client certificates" in problem.advice
    failed = steps[-1]
    assert not failed.ok and failed.detail == problem.advice
    assert "client-certificate" not in [step.name for step in steps]  # never "accepted"


@contextlib.contextmanager
def alerting_smtps_server(context: ssl.SSLContext) -> Iterator[SimpleNamespace]:
    """A bare SMTPS greeter on the blocking ssl module, which (unlike asyncio) sends the TLS
    alert when it refuses the client's certificate, as OpenSSL servers do."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)  # only so that the loop sees `stop`
    stop, refusals = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                try:
                    with context.wrap_socket(connection, server_side=True) as tls:
                        tls.sendall(b"220 smtp.gatewaymgr.test ESMTP\r\n")
                        tls.recv(100)
                except ssl.SSLError as error:
                    refusals.append(error.reason)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(port=listener.getsockname()[1], refusals=refusals)
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_the_tls_alert_for_a_missing_certificate_is_explained():
    certs = requiring_server(trustme.CA())
    with alerting_smtps_server(certs.server) as server:
        problem = problem_of(transport(server, certs, mode="smtps"))
    assert server.refusals == ["PEER_DID_NOT_RETURN_A_CERTIFICATE"]
    assert problem.kind == "client-certificate-required" and problem.step == "greeting"
    assert (
        "The server asked for a TLS client certificate and answered with the TLS alert "
        '"certificate required" when none came' in problem.advice
    )
    assert problem.server_reply == "TLS alert: certificate required"


def test_the_tls_alert_for_a_certificate_from_another_ca_is_explained():
    certs = requiring_server(trustme.CA())
    client = parse_client_certificate(client_pem(trustme.CA()))
    with alerting_smtps_server(certs.server) as server:
        problem = problem_of(transport(server, certs, client, mode="smtps"))
    assert server.refusals == ["CERTIFICATE_VERIFY_FAILED"]
    assert problem.kind == "client-certificate-refused"
    assert (
        "The server does not trust the authority that issued the client certificate "
        f"{client.info.subject} (issuer {client.info.issuer}" in problem.advice
    )
    assert f"trust {client.info.issuer} for client certificates" in problem.advice
    assert problem.advice.endswith('(TLS alert "unknown CA")')
    assert problem.server_reply == "TLS alert: unknown CA"


def test_a_server_that_does_not_ask_gets_no_certificate_and_the_transcript_says_so():
    certs = certificates()
    client = parse_client_certificate(client_pem(trustme.CA()))
    steps = []
    with smtp_server(mode="starttls", certs=certs, recorder=SeenRecorder()) as server:
        send_one(transport(server, certs, client, steps=steps))
    assert server.recorder.client_names == [None]
    (starttls,) = [step for step in steps if step.name == "starttls"]
    assert starttls.detail.endswith(
        f"; the server did not ask for a client certificate, so {client.info.subject} was not "
        "presented"
    )
    assert "client-certificate" not in [step.name for step in steps]


# -- the stored settings: the sealed key, the transcript, the command -------------------------


def stored(server, certs, client_text: str | None, mode: str = "starttls"):
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port = server.host, server.port
    record.encryption = Encryption.FORCE_SMTPS if mode == "smtps" else Encryption.AUTOMATIC
    record.options = {"timeout": 5}
    record.trusted_certificate = certs.ca_pem
    if client_text:
        client = parse_client_certificate(client_text)
        record.client_certificate = client.certificate_pem
        record.seal_secret("client_key_token", client.key_pem)
    record.save()
    return record


def key_lines(client_text: str) -> list[str]:
    """Every line of the private key's body, as it was uploaded and as it is sealed."""
    client = parse_client_certificate(client_text)
    lines = []
    for pem in (client_text, client.key_pem):
        body = pem[pem.index("PRIVATE KEY-----") :]
        lines += [line for line in body.splitlines()[1:] if line and "-----" not in line]
    return lines


@pytest.mark.django_db
@pytest.mark.parametrize("mode", MODES)
def test_stored_certificate_delivers_and_the_key_is_in_no_transcript_page_or_output(
    mode, admin_client
):
    client_ca = trustme.CA()
    certs = requiring_server(client_ca)
    text = client_pem(client_ca)
    with smtp_server(mode=mode, certs=certs, recorder=SeenRecorder()) as server:
        record = stored(server, certs, text, mode)
        assert f"presents the client certificate CN={CLIENT_NAME}," in (
            record.connection_plan().describe()
        )
        diagnosis = send_test_email(record, "admin@example.com")
        transcript = json.dumps(diagnosis.as_dict())
        out = io.StringIO()
        call_command("smtp_settings", "test", "--to", "admin@example.com", stdout=out)
        shown = io.StringIO()
        call_command("smtp_settings", "show", "--json", stdout=shown)
        page = admin_client.get("/settings/smtp/").content.decode()
    assert diagnosis.delivered, diagnosis.problem
    assert server.recorder.client_names == [CLIENT_NAME, CLIENT_NAME]
    assert f"presented client certificate CN={CLIENT_NAME}," in transcript
    assert f"the server accepted CN={CLIENT_NAME}," in transcript
    assert f"presented client certificate CN={CLIENT_NAME}," in out.getvalue()
    assert f"the server accepted CN={CLIENT_NAME}," in out.getvalue()
    lines = key_lines(text)
    for where, what in [
        ("transcript", transcript),
        ("command", out.getvalue()),
        ("show", shown.getvalue()),
        ("page", page),
        (
            "database row",
            json.dumps(list(type(record).objects.values().get().values()), default=str),
        ),
    ]:
        assert "PRIVATE KEY" not in what, where
        assert not [line for line in lines if line in what], where


@pytest.mark.django_db
def test_a_certificate_whose_key_is_gone_is_a_clear_problem_not_a_crash():
    client_ca = trustme.CA()
    certs = requiring_server(client_ca)
    with smtp_server(mode="starttls", certs=certs, recorder=SeenRecorder()) as server:
        record = stored(server, certs, client_pem(client_ca))
        record.client_key_token = ""  # dropped, as a save that loosens the binding does
        missing = send_test_email(record, "admin@example.com").problem
        record = stored(server, certs, client_pem(client_ca))
        record.port += 1  # sealed for other settings than these
        moved = send_test_email(record, "admin@example.com").problem
        record = stored(server, certs, client_pem(client_ca))
        record.client_key_token = "gAAAAABnot-a-token-any-key-reads"
        unreadable = send_test_email(record, "admin@example.com").problem
    assert server.recorder.connections == 0  # stopped before connecting
    for problem in (missing, moved):
        assert problem.kind == "client-key-missing"
        assert f"The private key of the client certificate CN={CLIENT_NAME}," in problem.advice
        assert "is not stored for these settings" in problem.advice
        assert "Upload the certificate with its key again" in problem.advice
    assert unreadable.kind == "client-key-unreadable"
    assert "cannot be decrypted with this machine's keys" in unreadable.advice


def test_the_key_reaches_the_disk_only_encrypted_in_a_private_file_deleted_at_once(
    monkeypatch, tmp_path
):
    text = client_pem(trustme.CA())
    client = parse_client_certificate(text)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = {}
    load_cert_chain = ssl.SSLContext.load_cert_chain

    def look(context, certfile, keyfile=None, password=None):
        seen["mode"] = os.stat(certfile).st_mode & 0o777
        seen["text"] = Path(certfile).read_text()
        return load_cert_chain(context, certfile, keyfile, password)

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", look)
    load_client_certificate(ssl.create_default_context(), client.certificate_pem, client.key_pem)
    assert seen["mode"] == 0o600
    assert "-----BEGIN ENCRYPTED PRIVATE KEY-----" in seen["text"]
    assert not [line for line in key_lines(text) if line in seen["text"]]
    assert list(tmp_path.iterdir()) == []  # gone once loaded


@pytest.mark.django_db
def test_a_stored_key_that_does_not_fit_the_certificate_is_a_clear_problem():
    ca = trustme.CA()
    certs = requiring_server(ca)
    with smtp_server(mode="starttls", certs=certs, recorder=SeenRecorder()) as server:
        record = stored(server, certs, client_pem(ca))
        record.seal_secret("client_key_token", parse_client_certificate(client_pem(ca)).key_pem)
        problem = send_test_email(record, "admin@example.com").problem
    assert server.recorder.connections == 0
    assert problem.kind == "client-certificate-unusable"
    assert "cannot be used together" in problem.advice
    assert "Upload the certificate with its key again" in problem.advice
