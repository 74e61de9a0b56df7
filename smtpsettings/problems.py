"""SMTP failures translated into sentences an administrator can act on.

`explain()` is a pure function from (step, exception, plan) to an `SmtpProblem`: what went
wrong, what to do about it, and the server's own reply beside it. The transport raises
the result; the outbox reads `temporary` to decide between a retry and giving up.

Everything that fails before MAIL FROM is a problem of the connection or the settings, not
of the message, so it is temporary: queued mail waits for the administrator's fix instead
of failing. A 5xx reply to the message itself (MAIL, RCPT, DATA) is permanent.
"""

from __future__ import annotations

import smtplib
import socket
import ssl

from gatewaymgr.untrusted import printable

from .certificates import CertificateInfo
from .hostnames import display_host_port
from .plan import ConnectionPlan, Security

# OpenSSL's X509_V_ERR_* codes that the advice distinguishes.
_EXPIRED, _NOT_YET_VALID = 10, 9
_UNTRUSTED = {18, 19, 20, 21, 2}  # self-signed, unknown issuer, incomplete chain
_HOSTNAME_MISMATCH = 62


class SmtpProblem(smtplib.SMTPException):
    """A failed step of talking to the SMTP server, explained."""

    def __init__(
        self,
        step: str,
        advice: str,
        *,
        kind: str,
        reply: tuple[int, str] | None = None,
        temporary: bool = False,
        certificate: CertificateInfo | None = None,
        certificate_pem: str = "",
        refused: dict[str, tuple[int, str]] | None = None,
    ):
        # Everything here is shown (pages, commands, the outbox): the server's words are made
        # printable once, here, so no escape sequence gets through (certificates: describe()).
        self.step = step
        self.advice = printable(advice)
        self.kind = kind
        self.reply = (reply[0], printable(reply[1])) if reply else reply
        self.temporary = temporary
        self.certificate = certificate
        self.certificate_pem = certificate_pem  # as presented, for "Trust this certificate"
        self.refused = {a: (c, printable(t)) for a, (c, t) in (refused or {}).items()}
        super().__init__(str(self))

    @property
    def server_reply(self) -> str:
        if not self.reply:
            return ""
        code, text = self.reply
        return f"{code} {text}".strip() if code > 0 else text

    def __str__(self) -> str:
        if self.server_reply:
            return f"{self.advice} (Server replied: {self.server_reply})"
        return self.advice


def reply_of(error: BaseException) -> tuple[int, str] | None:
    """The server's reply carried by an smtplib exception, decoded."""
    code = getattr(error, "smtp_code", None)
    text = getattr(error, "smtp_error", None)
    if code is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return int(code), printable(" ".join(str(text or "").split()))


def _describe_certificate(info: CertificateInfo | None) -> str:
    if info is None:
        return ""
    names = f", valid for {', '.join(info.names)}" if info.names else ""
    return (
        f" The certificate: subject {info.subject}, issuer {info.issuer}{names}, valid from "
        f"{info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d}, SHA-256 {info.sha256}."
    )


def explain(
    step: str,
    error: BaseException,
    plan: ConnectionPlan,
    *,
    certificate: CertificateInfo | None = None,
) -> SmtpProblem:
    """Translate what failed at `step` into advice; `certificate` is what the server presented."""
    if isinstance(error, SmtpProblem):
        return error
    where = display_host_port(plan.host, plan.port)
    reply = reply_of(error)

    if isinstance(error, socket.gaierror):
        return SmtpProblem(
            step,
            f"The server name {plan.host} does not resolve to an address. Check the spelling "
            "in Server, or enter the server's IP address.",
            kind="resolve",
            reply=(0, error.strerror or str(error)),
            temporary=True,
        )
    if isinstance(error, ConnectionRefusedError):
        return SmtpProblem(
            step,
            f"Nothing accepts connections on {where}. Check the port (587 for STARTTLS, 465 "
            "for SMTPS, 25 for plain relays) and that the server runs and is reachable from "
            "this machine.",
            kind="refused",
            reply=(0, str(error)),
            temporary=True,
        )
    if isinstance(error, TimeoutError | socket.timeout):
        return _timeout(step, plan, where)
    if isinstance(error, ssl.SSLCertVerificationError):
        return _untrusted(step, error, plan, certificate)
    if isinstance(error, ssl.SSLError):
        return _tls_failure(step, error, plan, where)
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return _disconnected(step, plan, where, error)
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return SmtpProblem(
            step,
            f"The server refused the user name or password for {plan.username}. Check both; "
            "some providers need an app password or a setting that allows SMTP sign-in.",
            kind="auth-refused",
            reply=reply,
            temporary=True,
        )
    if isinstance(error, smtplib.SMTPSenderRefused):
        sender = error.sender.decode() if isinstance(error.sender, bytes) else error.sender
        return _rejected(
            step,
            reply,
            f"The server refused the sender address {sender}. Most SMTP servers need a "
            "sender address that really exists"
            + (f" and that {plan.username} may send as." if plan.username else "."),
            kind="sender-refused",
        )
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        refused = {
            address: (
                code,
                printable(text.decode("utf-8", "replace") if isinstance(text, bytes) else text),
            )
            for address, (code, text) in error.recipients.items()
        }
        first_code, first_text = next(iter(refused.values()), (0, ""))
        problem = _rejected(
            step,
            (first_code, first_text),
            "The server refused every recipient: " + ", ".join(refused) + ".",
            kind="recipients-refused",
        )
        problem.refused = refused
        return problem
    if isinstance(error, smtplib.SMTPResponseException):
        return _rejected(step, reply, f"The server refused the {step.upper()} step.", kind=step)
    return SmtpProblem(
        step,
        f"Talking to {where} failed during {step}: {error}.",
        kind="other",
        reply=None,
        temporary=isinstance(error, OSError),
    )


def _rejected(step: str, reply: tuple[int, str] | None, advice: str, *, kind: str) -> SmtpProblem:
    code = reply[0] if reply else 0
    if 400 <= code < 500:
        return SmtpProblem(
            step,
            f"The server asked to try again later (a temporary refusal at {step.upper()}); "
            "the message will be retried.",
            kind="temporary",
            reply=reply,
            temporary=True,
        )
    if code == 552 or (reply and "5.3.4" in reply[1]):
        return SmtpProblem(
            step,
            "The message is too large for this server. Send smaller attachments, or raise "
            "the size limit on the server.",
            kind="too-large",
            reply=reply,
        )
    return SmtpProblem(step, advice, kind=kind, reply=reply)


def _timeout(step: str, plan: ConnectionPlan, where: str) -> SmtpProblem:
    seconds = f"{plan.options.timeout:g}"
    if step == "greeting" and plan.security is not Security.SMTPS:
        advice = (
            f"{where} accepted the connection but sent no greeting within {seconds} seconds. "
            "It probably expects TLS from the first byte (SMTPS): choose Force SMTPS, or use "
            "port 587 for STARTTLS."
        )
        kind = "wrong-mode"
    elif step in ("connect", "resolve"):
        advice = (
            f"No answer from {where} within {seconds} seconds. A firewall may be dropping the "
            "connection, or the server or port is wrong."
        )
        kind = "timeout"
    else:
        advice = f"The server stopped answering during {step} (no reply within {seconds} seconds)."
        kind = "timeout"
    return SmtpProblem(step, advice, kind=kind, reply=(0, "timed out"), temporary=True)


def _disconnected(step: str, plan: ConnectionPlan, where: str, error: BaseException) -> SmtpProblem:
    if step == "greeting" and "timed out" in str(error):
        return _timeout(step, plan, where)  # smtplib reports a silent server as a disconnect
    if step == "greeting" and plan.security is not Security.SMTPS:
        return SmtpProblem(
            step,
            f"{where} closed the connection instead of greeting. It probably expects TLS from "
            "the first byte (SMTPS): choose Force SMTPS, or use port 587 for STARTTLS.",
            kind="wrong-mode",
            reply=(0, str(error)),
            temporary=True,
        )
    return SmtpProblem(
        step,
        f"The server closed the connection during {step}. It may be overloaded or limit "
        "connections; the message will be retried.",
        kind="disconnected",
        reply=(0, str(error)),
        temporary=True,
    )


def _tls_failure(step: str, error: ssl.SSLError, plan: ConnectionPlan, where: str) -> SmtpProblem:
    reason = getattr(error, "reason", None) or str(error)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG") and (
        plan.security is Security.SMTPS
    ):
        fix = (
            "use port 587 with Encryption: Automatic"
            if plan.port != 587
            else "choose Encryption: Automatic"
        )
        return SmtpProblem(
            step,
            f"{where} answered in plain text where TLS was expected: this port speaks STARTTLS, "
            f"not SMTPS. To fix it, {fix}.",
            kind="wrong-mode",
            reply=(0, reason),
            temporary=True,
        )
    if reason in ("UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"):
        return SmtpProblem(
            step,
            f"{where} offers only TLS versions older than 1.2, which are not safe to use. "
            "Upgrade the server's TLS configuration.",
            kind="tls-version",
            reply=(0, reason),
            temporary=True,
        )
    return SmtpProblem(
        step,
        f"The TLS handshake with {where} failed ({reason}). Check that Encryption and Port "
        "match what the server offers: 587 with Automatic (STARTTLS) or 465 (SMTPS).",
        kind="tls",
        reply=(0, str(error)),
        temporary=True,
    )


def _untrusted(
    step: str,
    error: ssl.SSLCertVerificationError,
    plan: ConnectionPlan,
    certificate: CertificateInfo | None,
) -> SmtpProblem:
    code = error.verify_code
    about = _describe_certificate(certificate)
    if code == _HOSTNAME_MISMATCH:
        names = ", ".join(certificate.names) if certificate and certificate.names else "other names"
        advice = (
            f"The server's certificate is for {names}, not for {plan.host}. Enter a name the "
            "certificate is valid for in Server, or have the certificate reissued." + about
        )
        kind = "hostname-mismatch"
    elif code == _EXPIRED:
        until = f" on {certificate.not_after:%Y-%m-%d}" if certificate else ""
        advice = (
            f"The server's certificate expired{until}. Renew it on the SMTP server; "
            "until then no mail is sent to an unverified server." + about
        )
        kind = "expired"
    elif code == _NOT_YET_VALID:
        advice = (
            "The server's certificate is not valid yet. Check the clock of this machine and "
            "of the SMTP server." + about
        )
        kind = "not-yet-valid"
    elif code in _UNTRUSTED:
        advice = (
            "The server's certificate is not signed by an authority this machine trusts "
            "(self-signed or an internal CA). If you recognise its SHA-256 fingerprint, trust "
            'this certificate rather than setting {"verify_peer": false}.' + about
        )
        kind = "untrusted"
    else:
        advice = f"The server's certificate could not be verified: {error.verify_message}." + about
        kind = "certificate"
    return SmtpProblem(
        step,
        advice,
        kind=kind,
        reply=(0, error.verify_message or str(error)),
        temporary=True,
        certificate=certificate,
    )


def fingerprint_mismatch(
    plan: ConnectionPlan, actual: CertificateInfo, actual_hex: str
) -> SmtpProblem:
    pin = plan.peer_fingerprint
    assert pin is not None
    return SmtpProblem(
        "tls",
        f"The server's certificate does not match peer_fingerprint: it has {pin.algorithm.upper()} "
        f"{actual_hex}, the option requires {pin.hexdigest}. If the server's certificate was "
        "renewed, update peer_fingerprint; otherwise something is intercepting the connection."
        + _describe_certificate(actual),
        kind="fingerprint-mismatch",
        reply=(0, "certificate fingerprint mismatch"),
        temporary=True,
        certificate=actual,
    )


def not_the_trusted_certificate(actual: CertificateInfo | None, pem: str) -> SmtpProblem:
    return SmtpProblem(
        "tls",
        "The server presented a certificate other than the trusted one, and only that exact "
        "certificate is accepted. If the server's certificate was renewed, check the new one's "
        "fingerprint with the server's administrator and trust it; otherwise something is "
        "intercepting the connection." + (_describe_certificate(actual) if actual else ""),
        kind="untrusted",
        reply=(0, "not the trusted certificate"),
        temporary=True,
        certificate=actual,
        certificate_pem=pem,
    )


def policy_problem(
    step: str, advice: str, *, kind: str, reply: tuple[int, str] | None = None
) -> SmtpProblem:
    """A refusal of our own making (STARTTLS missing, password would leak, AUTH missing)."""
    return SmtpProblem(step, advice, kind=kind, reply=reply, temporary=True)
