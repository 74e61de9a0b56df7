"""Real SMTP servers for the tests: aiosmtpd on loopback, with trustme certificates.

Every server records what it saw (connections, EHLO names, NOOPs, sign-ins, messages) so the
tests assert on the server's side of the conversation, not on our own code's opinion.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.components import missing
from tests.selfsigned import self_signed_certificate

# Not loopback by its spelling, so the encryption rules treat it as a remote server, yet it
# reaches 127.0.0.1 through /etc/hosts (.ci/run adds the line).
TEST_HOST = "smtp.gatewaymgr.test"
USERNAME, PASSWORD = "alice", "correct horse battery staple"


def require_test_host() -> None:
    try:
        address = socket.gethostbyname(TEST_HOST)
    except OSError:
        address = None
    if address != "127.0.0.1":
        missing(
            f"{TEST_HOST} does not resolve to 127.0.0.1 (add it to /etc/hosts, as .ci/run does)"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)


@dataclass
class Recorder:
    """The handler: records, and misbehaves on request."""

    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    ehlo_names: list[str] = field(default_factory=list)
    noops: int = 0
    logins: list[str] = field(default_factory=list)
    mail_options: list[list[str]] = field(default_factory=list)
    refuse_sender: str | None = None  # e.g. "553 5.7.1 Sender address rejected"
    refuse_recipients: dict[str, str] = field(default_factory=dict)  # address -> reply
    data_replies: list[str] = field(default_factory=list)  # replies to use before "250 OK"
    noop_reply: str | None = None
    data_delay: float = 0.0  # seconds before answering DATA: a slow server
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.ehlo_names.append(hostname)
        return responses

    async def handle_NOOP(self, server, session, envelope, arg):
        self.noops += 1
        return self.noop_reply or "250 OK"

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.refuse_sender:
            return self.refuse_sender
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        self.mail_options.append(list(mail_options))
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_recipients:
            return self.refuse_recipients[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        with self.lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        return "250 OK: queued"


class RecordingController(Controller):
    def factory(self):
        self.handler.connections += 1
        return SMTP(self.handler, **self.SMTP_kwargs)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode() == USERNAME and auth_data.password.decode() == PASSWORD
    )
    if ok:
        server.event_handler.logins.append(f"{mechanism} {USERNAME}")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd replies 535 itself


@dataclass
class Certificates:
    ca: trustme.CA
    server: ssl.SSLContext  # what the server presents
    pem: str  # the server's leaf certificate
    ca_pem: str


def certificates(*, hostname: str = TEST_HOST, expired: bool = False) -> Certificates:
    ca = trustme.CA()
    if expired:
        leaf = ca.issue_cert(
            hostname,
            not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
            not_after=datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC),
        )
    else:
        leaf = ca.issue_cert(hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return Certificates(
        ca,
        context,
        leaf.cert_chain_pems[0].bytes().decode(),
        ca.cert_pem.bytes().decode(),
    )


def self_signed(hostname: str = TEST_HOST) -> Certificates:
    """A certificate that is its own issuer, as many internal SMTP servers have."""
    pem, key_pem = self_signed_certificate(hostname)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with trustme.Blob(pem.encode() + key_pem.encode()).tempfile() as path:
        context.load_cert_chain(path)
    return Certificates(None, context, pem, pem)


@dataclass
class Server:
    host: str
    port: int
    recorder: Recorder
    certificates: Certificates | None

    @property
    def messages(self) -> list[Received]:
        return self.recorder.messages


@contextlib.contextmanager
def smtp_server(
    *,
    mode: str = "plain",  # "plain", "starttls" or "smtps"
    certs: Certificates | None = None,
    auth: bool = False,
    data_size_limit: int = 10_000_000,
    recorder: Recorder | None = None,
    port: int | None = None,
) -> Iterator[Server]:
    """An aiosmtpd server on 127.0.0.1, reached as TEST_HOST."""
    recorder = recorder or Recorder()
    if mode != "plain" and certs is None:
        certs = certificates()
    kwargs: dict = {
        "data_size_limit": data_size_limit,
        "enable_SMTPUTF8": True,
        "server_hostname": TEST_HOST,
    }
    if mode == "starttls":
        kwargs["tls_context"] = certs.server
    if mode == "smtps":
        kwargs["ssl_context"] = certs.server
    if auth:
        kwargs["authenticator"] = authenticator
        # Allow AUTH over plain connections too, so the tests prove that *we* refuse.
        kwargs["auth_require_tls"] = False
    else:
        kwargs["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]  # offer no AUTH at all
    controller = RecordingController(
        recorder, hostname="127.0.0.1", port=port or free_port(), **kwargs
    )
    controller.start()
    recorder.connections = 0  # the controller's own start-up probe does not count
    try:
        yield Server(TEST_HOST, controller.port, recorder, certs)
    finally:
        controller.stop()
