"""The SMTP transport: carries out a ConnectionPlan over the standard library's smtplib and ssl.

One transport keeps its connection across sends (a task worker sends thousands over it), so
the help page's ping_threshold, restart_threshold and restart_threshold_sleep apply. Every
failure leaves here as an `SmtpProblem` that says what to do, with the server's reply.
"""

from __future__ import annotations

import hashlib
import re
import select
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from django.core.mail.utils import DNS_NAME

from gatewaymgr.untrusted import printable

from .auth import Authenticator, PasswordAuthenticator
from .certificates import CertificateInfo, der_to_pem, describe_der, exact_certificates
from .hostnames import parse_ip
from .plan import PLAIN_PORT, ConnectionPlan, Security
from .problems import (
    SmtpProblem,
    explain,
    fingerprint_mismatch,
    not_the_trusted_certificate,
    policy_problem,
    smtps_detected,
    starttls_missing,
)
from .tls import (
    answers_tls,
    asked_for_certificate,
    build_context,
    client_certificate_note,
    fingerprint_matches,
    handshake_asked_for_certificate,
)

_LINE_ENDS = re.compile(rb"\r\n|\r|\n")

Refusals = dict[str, tuple[int, str]]

# Seconds of silence after which a server that has not greeted is asked whether it speaks TLS.
GREETING_PATIENCE = 3.0


class Outgoing(NamedTuple):
    """A message as the transport sends it: envelope sender, recipients, and the bytes."""

    sender: str
    recipients: Sequence[str]
    data: bytes


@dataclass
class _Ahead:
    """The next message's MAIL, RCPT... and DATA, sent with the previous message's final dot
    (RFC 2920, 3.1); their replies are read when that message is sent."""

    commands: list[str]
    started: float  # perf_counter() when they went out, for the observer's timing


class Accepted(dict):
    """What send() returns: the refused recipients (Refusals; empty when all were accepted)
    and, as `reply`, the server's final reply to the message, such as Postfix's
    "250 2.0.0 Ok: queued as 4Xyz": what traces the message in the relay's log."""

    reply: str = ""


STEP_LABELS = {
    "resolve": "Resolve",
    "connect": "Connect",
    "tls": "TLS (SMTPS)",
    "greeting": "Greeting",
    "ehlo": "EHLO",
    "starttls": "STARTTLS",
    "client-certificate": "Client certificate",
    "token": "Token",
    "auth": "AUTH",
    "mail": "MAIL FROM",
    "rcpt": "RCPT TO",
    "data": "DATA",
    "noop": "NOOP",
    "quit": "QUIT",
    "settings": "Settings",
}


@dataclass
class Step:
    """One step of the SMTP dialogue, as the diagnostics show it."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""
    reply: str = ""
    certificate: CertificateInfo | None = None

    @property
    def label(self) -> str:
        return STEP_LABELS.get(self.name, self.name.upper())

    @property
    def milliseconds(self) -> str:
        return f"{self.seconds * 1000:.1f} ms"


Observer = Callable[[Step], None]


def ehlo_name(local_domain: str | None) -> str:
    """The EHLO argument: the configured name, an address literal for an IP, else our FQDN."""
    if not local_domain:
        return DNS_NAME.get_fqdn()
    address = parse_ip(local_domain)
    if address is None:
        return local_domain
    return f"[IPv6:{address.compressed}]" if address.version == 6 else f"[{address}]"


def wire_format(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled, the final dot."""
    crlf = data.count(b"\r\n")
    if data.count(b"\n") != crlf or data.count(b"\r") != crlf:  # Django's are CRLF already
        data = _LINE_ENDS.sub(b"\r\n", data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def _text(reply: bytes | str) -> str:
    """A server's reply on one line, printable: it may carry terminal escape sequences."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return printable(" ".join(text.split()))


def _shown(step: Step) -> Step:
    """`step` as it may be shown: whatever the server chose (its EHLO name and
    capabilities, its replies) made printable. Certificates are, by describe()."""
    step.detail, step.reply = printable(step.detail), printable(step.reply)
    return step


class SmtpTransport:
    """Sends messages as `plan` says. Not thread-safe: one per worker thread."""

    def __init__(
        self,
        plan: ConnectionPlan,
        password: str = "",
        *,
        authenticator: Authenticator | None = None,
        client_key: str = "",  # the client certificate's private key (PEM), if it has one
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.plan = plan
        # How to sign in (auth.py); a user name alone means the password, as it always did.
        if authenticator is None and plan.username:
            authenticator = PasswordAuthenticator(plan.username, password)
        self._authenticator = authenticator
        self._observer = observer
        self._clock = clock
        self._sleep = sleep
        # The client key goes into the TLS context and is not kept anywhere else.
        self._context = build_context(plan, client_key=client_key) if plan.encrypted else None
        self._ehlo_name = ehlo_name(plan.options.local_domain)
        self._smtp: smtplib.SMTP | None = None
        self._ahead: _Ahead | None = None  # the next message's envelope, already sent
        self._sent_on_connection = 0
        self._last_activity = 0.0
        self._last_send: float | None = None
        self._certificate_asked = False  # in this connection's handshake, by the server

    def __repr__(self) -> str:
        state = "open" if self._smtp else "closed"
        return f"<SmtpTransport {self.plan.host}:{self.plan.port} {state}>"

    @property
    def auth_mechanism(self) -> str:
        return self._authenticator.mechanism if self._authenticator else ""

    @property
    def is_open(self) -> bool:
        return self._smtp is not None

    # -- connection ---------------------------------------------------------------------

    def open(self) -> None:
        """Connect, secure and sign in, unless already connected."""
        if self._smtp is None:
            self._smtp = self._establish(self._context, authenticate=True)
            self._sent_on_connection = 0
            self._last_activity = self._clock()

    def close(self) -> None:
        """QUIT and close; quietly, since the messages are already sent. A connection with an
        envelope sent ahead is in DATA for a message that never came: it is dropped instead
        (a QUIT would be read as that message's content), and the server discards it."""
        if self._ahead is not None:
            self._discard()
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            with self._step("quit") as step:
                code, reply = smtp.quit()
                step.reply = f"{code} {_text(reply)}"
        except (SmtpProblem, OSError, smtplib.SMTPException):
            pass
        finally:
            smtp.close()

    def abort(self) -> None:
        """Drop the connection at once, without QUIT: after an interruption its state is
        unknown, and a QUIT could wait on a stalled server."""
        self._discard()

    def _discard(self) -> None:
        """Drop a connection that failed half-way; it is never reused."""
        smtp, self._smtp = self._smtp, None
        self._ahead = None  # the server discards a transaction that never got its final dot
        if smtp is not None:
            smtp.close()

    def _establish(self, context: ssl.SSLContext | None, *, authenticate: bool) -> smtplib.SMTP:
        plan = self.plan
        timeout = plan.options.timeout
        self._certificate_asked = False
        sock: socket.socket | None = None
        smtp: smtplib.SMTP | None = None
        try:
            with self._step("resolve") as step:
                addresses = socket.getaddrinfo(plan.host, plan.port, type=socket.SOCK_STREAM)
                step.detail = ", ".join(dict.fromkeys(str(a[4][0]) for a in addresses))
            with self._step("connect") as step:
                sock = self._connect_socket(addresses, timeout)
                local, remote = sock.getsockname(), sock.getpeername()
                step.detail = f"{remote[0]} port {remote[1]}, from {local[0]}"
            if plan.security is Security.SMTPS:
                with self._step("tls") as step:
                    sock = context.wrap_socket(sock, server_hostname=plan.host)
                    self._check_peer(sock, step)
            smtp = smtplib.SMTP(local_hostname=self._ehlo_name, timeout=timeout)
            smtp._host = plan.host  # the name TLS verifies, as smtplib.connect() would set
            smtp.sock = sock
            with self._step("greeting") as step:
                self._await_greeting(sock)
                code, reply = smtp.getreply()
                step.reply = f"{code} {_text(reply)}"
                if code != 220:
                    raise smtplib.SMTPConnectError(code, reply)
            self._report_client_certificate()
            self._hello(smtp)
            if plan.security in (Security.STARTTLS, Security.OPPORTUNISTIC):
                self._starttls(smtp, context)
            if authenticate and self._authenticator is not None:
                self._authenticator.sign_in(smtp, plan, self._step)
            return smtp
        except BaseException:
            if smtp is not None:
                smtp.close()
            elif sock is not None:
                sock.close()
            raise

    def _starttls(self, smtp: smtplib.SMTP, context: ssl.SSLContext) -> None:
        """Upgrade with STARTTLS: required, or (opportunistic) only when the server offers it."""
        offered = smtp.has_extn("starttls")
        if not offered and self.plan.security is Security.OPPORTUNISTIC:
            if self._observer:
                reason = self.plan.reason
                detail = f"not offered by the server: sending without encryption ({reason})"
                self._observer(Step("starttls", True, 0.0, detail))
            return
        with self._step("starttls") as step:
            if not offered:
                raise starttls_missing(self.plan)
            code, reply = smtp.starttls(context=context)
            step.reply = f"{code} {_text(reply)}"
            self._check_peer(smtp.sock, step)
            if self.plan.security is Security.OPPORTUNISTIC:
                step.detail += "; certificate not verified (opportunistic TLS)"
        self._hello(smtp)
        self._report_client_certificate()

    def _await_greeting(self, sock: socket.socket) -> None:
        """A plain connection to an SMTPS port never greets: it waits for our ClientHello.
        After a few silent seconds, ask over a second connection whether the port answers
        TLS, and say so at once instead of running out the timeout. Not on port 25, where
        servers may keep silent on purpose (greet pause) and SMTPS is unheard of."""
        plan = self.plan
        patience = min(GREETING_PATIENCE, plan.options.timeout)
        if plan.security is Security.SMTPS or plan.port == PLAIN_PORT:
            return
        if select.select([sock], [], [], patience)[0]:
            return  # the greeting (or the connection's end) is there to read
        if answers_tls(sock.getpeername(), plan.host, patience, plan.options.source_ip):
            raise smtps_detected(plan, patience)

    def _connect_socket(self, addresses: list, timeout: float) -> socket.socket:
        source = self.plan.options.source_ip
        last_error: OSError | None = None
        for family, kind, proto, _, address in addresses:
            if source and (":" in source) != (family == socket.AF_INET6):
                continue  # the source address cannot reach this address family
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            try:
                if source:
                    sock.bind((source, 0))
                sock.connect(address)
                return sock
            except OSError as error:
                sock.close()
                last_error = error
        raise last_error or OSError(f"no address of {self.plan.host} fits source_ip {source}")

    def _hello(self, smtp: smtplib.SMTP) -> None:
        with self._step("ehlo") as step:
            code, reply = smtp.ehlo()
            if code != 250:
                code, reply = smtp.helo()
                if code != 250:
                    raise smtplib.SMTPHeloError(code, reply)
            features = [
                " ".join(f"{name.upper()} {value}".split())
                for name, value in smtp.esmtp_features.items()
            ]
            step.detail = f"as {self._ehlo_name}; offers " + (", ".join(features) or "nothing")
            step.reply = f"{code} {_text(reply).split()[0] if reply else ''}".strip()

    def _report_client_certificate(self) -> None:
        """The server answered after a handshake in which it asked for our certificate: it
        accepted it. (With TLS 1.3 a refusal arrives only at this first read.)"""
        asked, self._certificate_asked = self._certificate_asked, False
        info = self.plan.client_certificate_info
        if asked and info and self._observer:
            detail = f"the server accepted {info.subject} (SHA-256 {info.sha256})"
            self._observer(Step("client-certificate", True, 0.0, detail))

    def _check_peer(self, sock: ssl.SSLSocket, step: Step) -> None:
        der = sock.getpeercert(binary_form=True)
        info = describe_der(der) if der else None
        step.certificate = info
        cipher = sock.cipher()
        step.detail = f"{sock.version()}, {cipher[0] if cipher else 'unknown cipher'}"
        self._certificate_asked = asked_for_certificate(sock)
        step.detail += client_certificate_note(sock, self.plan.client_certificate_info)
        exact = exact_certificates(self.plan.trusted_certificate) if self.plan.verify_peer else ()
        if exact and der not in exact:
            raise not_the_trusted_certificate(info, der_to_pem(der) if der else "")
        pin = self.plan.peer_fingerprint
        if pin and not (der and fingerprint_matches(der, pin.algorithm, pin.hexdigest)):
            actual = hashlib.new(pin.algorithm, der or b"").hexdigest()
            raise fingerprint_mismatch(self.plan, info, actual)

    # -- sending ------------------------------------------------------------------------

    def send(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        following: Outgoing | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Accepted:
        """Send one message. Returns the refused recipients when others accepted it, with the
        server's final reply; raises SmtpProblem when nobody got it.

        `following`, the message the caller sends next, lets its MAIL, RCPT... and DATA travel
        with this message's final dot when the server offers PIPELINING: one round trip per
        message. Its content goes only when it is sent, so the caller may record this one's
        result first; if it then sends another message, or closes, the connection is dropped
        (its server is waiting in DATA) and nothing of `following` is delivered.

        `meanwhile` runs once this message is written, before its reply is read: the caller's
        work overlaps the server's (the backend builds the message after `following`). It
        must not raise."""
        try:
            ahead = self._resume(sender, recipients, data)
            if ahead is None:
                self._prepare()
            refused = self._transaction(sender, recipients, data, ahead, following, meanwhile)
        except SmtpProblem as problem:
            if not _answered(problem):
                self._discard()  # it broke, the server is closing it, or its replies are astray
            raise
        except BaseException:
            self._discard()  # interrupted half-way: the next reply read might be this one's
            raise
        self._sent_on_connection += 1
        self._last_activity = self._last_send = self._clock()
        return refused

    def _prepare(self) -> None:
        options = self.plan.options
        if self._smtp is not None:
            if options.restart_threshold and self._sent_on_connection >= options.restart_threshold:
                self.close()
                if options.restart_threshold_sleep:
                    self._sleep(options.restart_threshold_sleep)
            elif self._clock() - self._last_activity > options.ping_threshold:
                self._ping()
        if options.max_per_second and self._last_send is not None:
            wait = self._last_send + 1 / options.max_per_second - self._clock()
            if wait > 0:
                self._sleep(wait)
        self.open()

    def _ping(self) -> None:
        try:
            with self._step("noop") as step:
                code, reply = self._smtp.noop()
                step.reply = f"{code} {_text(reply)}"
                if code != 250:
                    raise smtplib.SMTPResponseException(code, reply)
        except (SmtpProblem, OSError, smtplib.SMTPException):
            self._discard()  # reconnect and send anyway

    def _resume(self, sender: str, recipients: Sequence[str], data: bytes) -> _Ahead | None:
        """The envelope sent ahead, if it is this message's and the connection was not left
        idle meanwhile; any other envelope sent ahead is given up with its connection."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        idle = self._clock() - self._last_activity > self.plan.options.ping_threshold
        if idle or ahead.commands != self._envelope(self._smtp, sender, recipients, data):
            self._discard()
            return None
        return ahead

    def _pipeline_next(self, smtp: smtplib.SMTP, following: Outgoing | None) -> list[str] | None:
        """The commands of `following` to send with this message's final dot, or None: only
        with PIPELINING, with no throttle to space the messages, and when this connection is
        not restarted after this message."""
        options = self.plan.options
        if following is None or options.max_per_second or not smtp.has_extn("pipelining"):
            return None
        if options.restart_threshold and self._sent_on_connection + 1 >= options.restart_threshold:
            return None
        try:
            return self._envelope(smtp, *following)
        except SmtpProblem:
            return None  # sent on its own, its send says why

    @staticmethod
    def _envelope(
        smtp: smtplib.SMTP, sender: str, recipients: Sequence[str], data: bytes
    ) -> list[str]:
        """MAIL FROM (with SIZE, BODY and SMTPUTF8 as the server offers them), RCPT TO..., DATA."""
        params = []
        if smtp.has_extn("size"):
            params.append(f"SIZE={len(data)}")
        if smtp.has_extn("8bitmime") and not data.isascii():
            params.append("BODY=8BITMIME")
        if not (sender.isascii() and all(r.isascii() for r in recipients)):
            if not smtp.has_extn("smtputf8"):
                raise policy_problem(
                    "mail",
                    "An address contains non-ASCII characters, and the server does not "
                    "support them (no SMTPUTF8).",
                    kind="smtputf8-missing",
                )
            params.append("SMTPUTF8")
        mail = f"MAIL FROM:<{sender}>" + "".join(f" {p}" for p in params)
        return [mail, *(f"RCPT TO:<{r}>" for r in recipients), "DATA"]

    def _transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        ahead: _Ahead | None,
        following: Outgoing | None,
        meanwhile: Callable[[], None] | None,
    ) -> Accepted:
        smtp = self._smtp
        commands = ahead.commands if ahead else self._envelope(smtp, sender, recipients, data)
        step = "mail"
        try:
            if ahead is not None:  # sent with the previous final dot: only the replies to read
                started = ahead.started
                replies = [smtp.getreply() for _ in commands]
            else:
                started = time.perf_counter()
                replies = self._exchange(smtp, commands, len(recipients))
            mail_reply = replies[0]
            rcpt_replies = replies[1 : 1 + len(recipients)]
            data_reply = replies[-1] if len(replies) == len(commands) else None
            if self._observer:
                self._report_envelope(started, sender, recipients, replies)
            if mail_reply[0] != 250:
                self._abandon(smtp, data_reply)
                raise smtplib.SMTPSenderRefused(mail_reply[0], mail_reply[1], sender)
            refused = {
                r: (code, _text(text))
                for r, (code, text) in zip(recipients, rcpt_replies, strict=True)
                if code not in (250, 251)
            }
            step = "rcpt"
            if len(refused) == len(recipients):
                self._abandon(smtp, data_reply)
                raise smtplib.SMTPRecipientsRefused(refused)
            step = "data"
            with self._step("data") as report:
                report.reply = _reply(data_reply)
                if data_reply[0] != 354:
                    smtp.rset()
                    raise smtplib.SMTPDataError(*data_reply)
                then = self._pipeline_next(smtp, following)
                smtp.send(wire_format(data) + (_wire(then) if then else b""))
                if then:
                    self._ahead = _Ahead(then, time.perf_counter())
                if meanwhile is not None:
                    meanwhile()
                code, reply = smtp.getreply()
                report.reply += f", then {code} {_text(reply)}"
                report.detail = f"{len(data):,} bytes"
                if code != 250:
                    raise smtplib.SMTPDataError(code, reply)
            accepted = Accepted(refused)
            accepted.reply = f"{code} {_text(reply)}"
            return accepted
        except SmtpProblem as problem:
            if step == "data":  # a recipient refused at RCPT keeps its own reply
                problem.refused = {**_printable(refused), **problem.refused}
            raise
        except OSError as error:  # smtplib's exceptions are OSErrors too
            problem = explain(step, error, self.plan)
            answered = isinstance(
                error, smtplib.SMTPResponseException | smtplib.SMTPRecipientsRefused
            )
            if not answered:
                self._discard()  # the connection broke: never reuse it
            if step == "data":
                problem.refused = {**_printable(refused), **problem.refused}
            raise problem from None

    @staticmethod
    def _exchange(smtp: smtplib.SMTP, commands: list[str], rcpt_count: int) -> list[tuple]:
        """MAIL, RCPT... and DATA: in one write with PIPELINING (RFC 2920), else one by one,
        stopping where the rest would be pointless."""
        if smtp.has_extn("pipelining"):
            smtp.send(_wire(commands))
            return [smtp.getreply() for _ in commands]
        replies = []
        for index, command in enumerate(commands):
            smtp.send(_wire([command]))
            replies.append(smtp.getreply())
            if index == 0 and replies[0][0] != 250:
                break
            if index == rcpt_count and all(code not in (250, 251) for code, _ in replies[1:]):
                break
        return replies

    @staticmethod
    def _abandon(smtp: smtplib.SMTP, data_reply: tuple | None) -> None:
        """End a transaction that must not deliver: a server that still said 354 to DATA
        gets an empty message (RFC 2920), then RSET."""
        if data_reply and data_reply[0] == 354:
            smtp.send(b".\r\n")
            smtp.getreply()
        smtp.rset()

    # -- observation --------------------------------------------------------------------

    @contextmanager
    def _step(self, name: str) -> Iterator[Step]:
        """Time a step, tell the observer, and translate a failure into an SmtpProblem."""
        step = Step(name, ok=True, seconds=0.0)
        started = time.perf_counter()
        try:
            yield step
        except Exception as error:  # SystemExit and KeyboardInterrupt go on as they are
            step.ok = False
            problem = self._explain(name, error)
            step.seconds = time.perf_counter() - started
            step.reply = problem.server_reply
            step.detail = problem.advice
            step.certificate = step.certificate or problem.certificate
            if self._observer:
                self._observer(_shown(step))
            raise problem from None
        step.seconds = time.perf_counter() - started
        if self._observer:
            self._observer(_shown(step))

    def _report_envelope(
        self, started: float, sender: str, recipients: Sequence[str], replies: list[tuple]
    ) -> None:
        """MAIL, RCPT and DATA travel together when pipelined, so they share one timing."""
        seconds = time.perf_counter() - started
        mail, rcpts = replies[0], replies[1 : 1 + len(recipients)]
        self._observer(Step("mail", mail[0] == 250, seconds, f"from {sender}", _reply(mail)))
        for recipient, reply in zip(recipients, rcpts, strict=False):
            self._observer(
                Step("rcpt", reply[0] in (250, 251), 0.0, f"to {recipient}", _reply(reply))
            )

    def _explain(self, step: str, error: BaseException) -> SmtpProblem:
        if isinstance(error, SmtpProblem):
            return error
        certificate = pem = None
        if isinstance(error, ssl.SSLCertVerificationError):
            certificate, pem = self.presented_certificate()
        problem = explain(
            step,
            error,
            self.plan,
            certificate=certificate,
            # Asked in the handshake just made; known even if that handshake failed.
            client_certificate_asked=self._certificate_asked
            or (step in ("tls", "starttls") and handshake_asked_for_certificate(self._context)),
        )
        problem.certificate_pem = pem or ""
        return problem

    def presented_certificate(self) -> tuple[CertificateInfo | None, str | None]:
        """What the server presents, fetched over a second, unverified connection that
        sends nothing but the handshake: only to show the administrator."""
        probe = SmtpTransport(self.plan)
        unverified = build_context(self.plan, verify=False)
        try:
            smtp = probe._establish(unverified, authenticate=False)
        except (SmtpProblem, OSError, smtplib.SMTPException):
            return None, None
        try:
            der = smtp.sock.getpeercert(binary_form=True)
            return describe_der(der), der_to_pem(der)
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                smtp.close()


def _answered(problem: SmtpProblem) -> bool:
    """The server refused, in step, with a 4xx or 5xx: the connection can serve the next
    message. Anything else (no reply, 421, a 2xx where a refusal was read) drops it."""
    code = problem.reply[0] if problem.reply else 0
    return 400 <= code < 600 and code != 421


def _wire(commands: list[str]) -> bytes:
    """Commands as they are written: one line each; UTF-8 only where SMTPUTF8 allowed it."""
    text = "".join(f"{c}\r\n" for c in commands)
    return text.encode("ascii" if text.isascii() else "utf-8")


def _printable(refused: Refusals) -> Refusals:
    return {address: (code, printable(text)) for address, (code, text) in refused.items()}


def _reply(reply: tuple) -> str:
    code, text = reply
    return f"{code} {_text(text)}"
