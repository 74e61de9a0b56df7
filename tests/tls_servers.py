"""aiosmtpd servers for the issue-13 TLS tests, built on tests/smtpservers.py: each records, on
the server's side, whether every message and every AUTH attempt arrived over TLS."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from smtpsettings.options import parse_options
from smtpsettings.plan import Encryption, SmtpConfig, plan
from smtpsettings.problems import SmtpProblem
from smtpsettings.transport import SmtpTransport
from tests.smtpservers import (
    PASSWORD,
    TEST_HOST,
    USERNAME,
    Certificates,
    Recorder,
    RecordingController,
    Server,
    certificates,
    free_port,
)

MESSAGE = b"From: gw@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"


@dataclass
class TlsRecorder(Recorder):
    """Also records whether each message came over TLS, and every AUTH attempt."""

    message_tls: list[bool] = field(default_factory=list)
    sign_in_attempts: list[tuple[str, bool]] = field(default_factory=list)  # (mechanism, over TLS)

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if reply.startswith("250"):
            self.message_tls.append(session.ssl is not None)
        return reply


class RefusingPlain(SMTP):
    """Offers PLAIN but answers it "504 unrecognized", as a server whose PLAIN is disabled."""

    async def auth_PLAIN(self, _, args):
        self.event_handler.sign_in_attempts.append(("PLAIN", self.session.ssl is not None))
        await self.push("504 5.5.4 Unrecognized authentication type")
        return AuthResult(success=False, handled=True)


class TlsController(RecordingController):
    smtp_class = SMTP

    def factory(self):
        self.handler.connections += 1
        return self.smtp_class(self.handler, **self.SMTP_kwargs)


def counting_authenticator(server, session, envelope, mechanism, auth_data):
    recorder = server.event_handler
    recorder.sign_in_attempts.append((mechanism, session.ssl is not None))
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode() == USERNAME and auth_data.password.decode() == PASSWORD
    )
    if ok:
        recorder.logins.append(f"{mechanism} {USERNAME}")
    return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 itself


@contextlib.contextmanager
def tls_server(
    *,
    mode: str = "plain",  # "plain", "starttls" or "smtps"
    certs: Certificates | None = None,
    port: int | None = None,
    auth: bool = False,
    auth_require_tls: bool = False,
    smtp_class: type[SMTP] = SMTP,
) -> Iterator[Server]:
    """A server on 127.0.0.1 (reached as TEST_HOST or 127.0.0.1); port 25 skips the test when
    something else holds it."""
    recorder = TlsRecorder()
    if mode != "plain" and certs is None:
        certs = certificates()
    kwargs: dict = {"server_hostname": TEST_HOST}
    if mode == "starttls":
        kwargs["tls_context"] = certs.server
    if mode == "smtps":
        kwargs["ssl_context"] = certs.server
    if auth:
        kwargs["authenticator"] = counting_authenticator
        kwargs["auth_require_tls"] = auth_require_tls
    else:
        kwargs["auth_exclude_mechanism"] = ["LOGIN", "PLAIN"]
    controller = TlsController(recorder, hostname="127.0.0.1", port=port or free_port(), **kwargs)
    controller.smtp_class = smtp_class
    try:
        controller.start()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            pytest.skip(f"127.0.0.1 port {port} is in use")
        raise
    recorder.connections = 0
    try:
        yield Server(TEST_HOST, controller.port, recorder, certs)
    finally:
        controller.stop()


def transport(
    server: Server,
    *,
    host: str = TEST_HOST,
    encryption: str = "auto",
    user: str = "",
    password: str = "",
    trusted: str = "",
    observer=None,
    **options,
) -> SmtpTransport:
    config = SmtpConfig(
        host,
        server.port,
        Encryption(encryption),
        user,
        parse_options({"timeout": 10, **options}),
        trusted,
    )
    return SmtpTransport(plan(config), password, observer=observer)


def send(transport: SmtpTransport, count: int = 1) -> None:
    try:
        for _ in range(count):
            transport.send("gw@example.com", ["bob@example.com"], MESSAGE)
    finally:
        transport.close()


def problem_of(transport: SmtpTransport, count: int = 1) -> SmtpProblem:
    with pytest.raises(SmtpProblem) as caught:
        send(transport, count)
    return caught.value
