"""SMTP failures translated into sentences an administrator can act on.

`explain()` is a pure function from (step, exception, plan) to an `SmtpProblem`: what went
wrong, what to do about it, and the server's own reply beside it. The transport raises
the result; the outbox reads `temporary` to decide between a retry and giving up.

Everything that fails before MAIL FROM is a problem of the connection or the settings, not
of the message, so it is temporary: queued mail waits for the administrator's fix instead
of failing. A 5xx reply to the message itself (MAIL, RCPT, DATA) is permanent.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl

from gatewaymgr.untrusted import printable

from .certificates import CertificateInfo
from .hostnames import display_host_port
from .options import Fingerprint
from .plan import ConnectionPlan, Security

# OpenSSL's X509_V_ERR_* codes that the advice distinguishes.
_EXPIRED, _NOT_YET_VALID = 10, 9
_UNTRUSTED = {18, 19, 20, 21, 2}  # self-signed, unknown issuer, incomplete chain
_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH = 62, 64


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
        # Not super(): in the subclasses below the next class is smtplib's, whose __init__
        # takes the reply; their attributes are properties of this problem instead.
        smtplib.SMTPException.__init__(self, str(self))

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


class _ReplyAttributes:
    """smtplib's smtp_code and smtp_error (bytes, as smtplib has them), from the reply."""

    reply: tuple[int, str] | None

    @property
    def smtp_code(self) -> int:
        return self.reply[0] if self.reply else -1

    @property
    def smtp_error(self) -> bytes:
        return (self.reply[1] if self.reply else "").encode("utf-8")


# Code written for Django's SMTP backend catches smtplib's exceptions and reads their
# attributes; these problems are those exceptions too (issue 13), keeping the advice as str().
class SmtpAuthenticationProblem(_ReplyAttributes, SmtpProblem, smtplib.SMTPAuthenticationError):
    """The server refused the credentials (a password or an OAuth token)."""


class SmtpSenderProblem(_ReplyAttributes, SmtpProblem, smtplib.SMTPSenderRefused):
    """The server refused MAIL FROM; `sender` is the address it refused."""

    def __init__(self, *args, sender: str = "", **kwargs) -> None:
        self.sender = sender
        super().__init__(*args, **kwargs)


class SmtpRecipientsProblem(SmtpProblem, smtplib.SMTPRecipientsRefused):
    """The server refused every recipient; `recipients` maps each to (code, reply bytes)."""

    @property
    def recipients(self) -> dict[str, tuple[int, bytes]]:
        return {address: (code, text.encode()) for address, (code, text) in self.refused.items()}


class SmtpConnectionRefused(SmtpProblem, ConnectionRefusedError):
    """Nothing accepts connections there: also the ConnectionRefusedError Django's backend
    lets through."""


class SmtpDataProblem(_ReplyAttributes, SmtpProblem, smtplib.SMTPDataError):
    """The server refused the message itself at DATA (too large, spam, policy)."""


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
    client_certificate_asked: bool = False,
) -> SmtpProblem:
    """Translate what failed at `step` into advice; `certificate` is what the server presented;
    `client_certificate_asked`: the server asked for a client certificate in the handshake just
    before."""
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
        return SmtpConnectionRefused(
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
    if alert := client_certificate_alert(error):
        return _client_certificate_refused(step, CLIENT_CERTIFICATE_ALERTS[alert], plan)
    if client_certificate_asked and _closed_or_failed(error):
        said = "handshake failure" if isinstance(error, ssl.SSLError) and not _eof(error) else None
        return _client_certificate_refused(step, said, plan)
    if isinstance(error, ssl.SSLCertVerificationError):
        return _untrusted(step, error, plan, certificate)
    if isinstance(error, ssl.SSLError):
        return _tls_failure(step, error, plan, where)
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return _disconnected(step, plan, where, error)
    if reply and reply[0] >= 400 and "certificate" in reply[1].lower():
        return _client_certificate_reply(step, reply, plan)
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return SmtpAuthenticationProblem(
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
            cls=SmtpSenderProblem,
            sender=sender,
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
            cls=SmtpRecipientsProblem,
        )
        problem.refused = refused
        return problem
    if isinstance(error, smtplib.SMTPResponseException):
        cls = SmtpDataProblem if isinstance(error, smtplib.SMTPDataError) else SmtpProblem
        advice = f"The server refused the {step.upper()} step."
        return _rejected(step, reply, advice, kind=step, cls=cls)
    return SmtpProblem(
        step,
        f"Talking to {where} failed during {step}: {error}.",
        kind="other",
        reply=None,
        temporary=isinstance(error, OSError),
    )


def _rejected(
    step: str,
    reply: tuple[int, str] | None,
    advice: str,
    *,
    kind: str,
    cls: type[SmtpProblem] = SmtpProblem,  # the smtplib exception it also is
    **attributes: str,
) -> SmtpProblem:
    code = reply[0] if reply else 0
    if 400 <= code < 500:
        return cls(
            step,
            f"The server asked to try again later (a temporary refusal at {step.upper()}); "
            "the message will be retried.",
            kind="temporary",
            reply=reply,
            temporary=True,
            **attributes,
        )
    if code == 552 or (reply and "5.3.4" in reply[1]):
        return cls(
            step,
            "The message is too large for this server. Send smaller attachments, or raise "
            "the size limit on the server.",
            kind="too-large",
            reply=reply,
            **attributes,
        )
    return cls(step, advice, kind=kind, reply=reply, **attributes)


def _timeout(step: str, plan: ConnectionPlan, where: str) -> SmtpProblem:
    seconds = f"{plan.options.timeout:g}"
    if step == "greeting" and plan.security is not Security.SMTPS and plan.port != 25:
        # The transport asked a second connection for a TLS handshake, and none came.
        advice = (
            f"{where} accepted the connection but sent no greeting within {seconds} seconds, "
            "and does not answer a TLS handshake either, so it is not SMTPS. The server may be "
            "stalled or overloaded, or nothing that speaks SMTP listens on this port: check "
            "Server and Port."
        )
        kind = "no-greeting"
    elif step == "greeting" and plan.security is not Security.SMTPS:
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


def smtps_detected(plan: ConnectionPlan, seconds: float) -> SmtpProblem:
    """No greeting came, and a second connection's TLS handshake was answered: the port
    speaks SMTPS, and waiting for a greeting would only run out the timeout."""
    where = display_host_port(plan.host, plan.port)
    return SmtpProblem(
        "greeting",
        f"{where} sent no greeting within {seconds:g} seconds but answered a TLS handshake: it "
        "expects TLS from the first byte (SMTPS): choose Force SMTPS to keep port "
        f"{plan.port}, or use port 465.",
        kind="wrong-mode",
        reply=(0, "no greeting; answers TLS"),
        temporary=True,
    )


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
        return SmtpProblem(
            step,
            f"{where} answered in plain text where TLS from the first byte was expected: it "
            f"does not speak SMTPS on this port. To fix it, {_plain_port_fix(plan)}.",
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
    if problem := _server_side_tls_failure(step, error, plan, where):
        return problem
    return SmtpProblem(
        step,
        f"The TLS handshake with {where} failed ({reason}). Check that Encryption and Port "
        "match what the server offers: 587 with Automatic (STARTTLS) or 465 (SMTPS).",
        kind="tls",
        reply=(0, str(error)),
        temporary=True,
    )


def _plain_port_fix(plan: ConnectionPlan) -> str:
    """What to choose for a port that answers in plain text. Whether it offers STARTTLS is
    not known yet (that needs EHLO), so nothing is claimed about it."""
    if plan.port == 465:
        return "use port 587 with Encryption: Automatic (STARTTLS)"
    if plan.port == 25:
        return "choose Encryption: Automatic: on port 25 it uses STARTTLS when the server offers it"
    return f"choose Encryption: Automatic on port {plan.port}, which upgrades with STARTTLS"


def _server_side_tls_failure(
    step: str, error: ssl.SSLError, plan: ConnectionPlan, where: str
) -> SmtpProblem | None:
    """A handshake the server broke off: after it agreed to STARTTLS, or with a TLS alert of
    its own. Encryption and Port are then right; the server's TLS setup is not."""
    reason = getattr(error, "reason", None) or ""
    alert = "ALERT" in reason
    if not (alert or (step == "starttls" and _eof(error))):
        return None
    if alert:
        said = reason.split("ALERT_", 1)[-1].replace("_", " ").lower()
        how = f'ended the TLS handshake with the alert "{said}"'
    else:
        how = "closed the connection during the TLS handshake"
    agreed = "agreed to STARTTLS, then " if step == "starttls" else "answers TLS but "
    advice = (
        f"{where} {agreed}{how}. Encryption and Port are right: the failure is on the "
        "server's side, most often a certificate or private key it cannot load, or no cipher "
        "or TLS version in common (this product uses TLS 1.2 or later). Ask the server's "
        "administrator: the server's log names the cause."
    )
    if plan.security is Security.OPPORTUNISTIC:
        advice += ' Until it is fixed, {"auto_tls": false} sends without encryption.'
    return SmtpProblem(step, advice, kind="tls-server", reply=(0, str(error)), temporary=True)


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
    elif code == _IP_ADDRESS_MISMATCH:
        names = ", ".join(certificate.names) if certificate and certificate.names else "names"
        advice = (
            f"The server's certificate is for {names}, not for the IP address {plan.host}. "
            "Enter a name the certificate is valid for in Server instead of the address, or "
            "have a certificate issued that includes the address." + about
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
        message = (error.verify_message or "unknown reason").rstrip(".")
        advice = f"The server's certificate could not be verified: {message}." + about
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
    # The certificate's description ends with its SHA-256: against a SHA-256 pin that is the
    # one to compare, so it is not said twice; another algorithm's is said once, as the pin is.
    has = (
        ""
        if pin.algorithm == "sha256" and actual
        else f"; it has {Fingerprint(pin.algorithm, actual_hex)}"
    )
    return SmtpProblem(
        "tls",
        f"The server's certificate does not match peer_fingerprint, which requires {pin}{has}. "
        "If the server's certificate was renewed, update peer_fingerprint; otherwise something "
        "is intercepting the connection." + _describe_certificate(actual),
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


# -- TLS client certificates ----------------------------------------------------------------

# The TLS alerts a server sends about the client's certificate (OpenSSL's names for them
# received), in the words of RFC 8446.
CLIENT_CERTIFICATE_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate required",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}


def client_certificate_alert(error: BaseException) -> str | None:
    """The client-certificate alert behind `error`, if any. With TLS 1.3 the server's verdict
    arrives after the handshake, at the first read, where smtplib turns the SSLError into
    SMTPServerDisconnected: the alert is then its context, or named in its text."""
    for candidate in (error, error.__cause__, error.__context__):
        reason = getattr(candidate, "reason", None)
        if isinstance(candidate, ssl.SSLError) and reason in CLIENT_CERTIFICATE_ALERTS:
            return reason
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return next((r for r in CLIENT_CERTIFICATE_ALERTS if r in str(error)), None)
    return None


def _eof(error: BaseException) -> bool:
    return isinstance(error, ssl.SSLEOFError) or "UNEXPECTED_EOF" in str(error)


def _closed_or_failed(error: BaseException) -> bool:
    """How a server that asked for a client certificate refuses one (or its absence) without
    a certificate alert: TLS 1.2's "handshake failure", or closing the connection (Python's
    asyncio servers do)."""
    if isinstance(error, smtplib.SMTPServerDisconnected | ConnectionResetError) or _eof(error):
        return True
    return getattr(error, "reason", None) == "SSLV3_ALERT_HANDSHAKE_FAILURE"


def _which_client_certificate(info: CertificateInfo) -> str:
    return (
        f"the client certificate {info.subject} (issuer {info.issuer}, valid until "
        f"{info.not_after:%Y-%m-%d}, SHA-256 {info.sha256})"
    )


_NO_CLIENT_CERTIFICATE = (
    "Add the client certificate and its private key that the server's administrator issued "
    "for this gateway (Settings -> SMTP, or manage.py smtp_settings set --client-certificate "
    "FILE)."
)


def _client_certificate_refused(step: str, said: str | None, plan: ConnectionPlan) -> SmtpProblem:
    """The server refused the handshake's client certificate (or its absence) with the TLS
    alert `said`, or by closing the connection (`said` None) right after asking for one."""
    info = plan.client_certificate_info
    answer = f'answered with the TLS alert "{said}"' if said else "closed the connection"
    if info is None:
        advice = (
            f"The server asked for a TLS client certificate and {answer} when none came: it "
            "requires one, and none is configured. " + _NO_CLIENT_CERTIFICATE
        )
        kind = "client-certificate-required"
    else:
        which = _which_client_certificate(info)
        if said is None:
            what = (
                f"The server closed the connection right after receiving {which}: it does not "
                "accept it, most likely because it does not trust its issuer. Ask the server's "
                f"administrator to trust {info.issuer} for client certificates (Postfix: "
                "smtpd_tls_CAfile), or use a client certificate that the server's CA issued."
            )
        elif said == "unknown CA":
            what = (
                f"The server does not trust the authority that issued {which}. Ask the server's "
                f"administrator to trust {info.issuer} for client certificates (Postfix: "
                "smtpd_tls_CAfile), or use a client certificate that the server's CA issued."
            )
        elif said == "certificate expired":
            what = f"The server says that {which} has expired. Renew it and upload the new one."
        elif said == "certificate revoked":
            what = f"The server says that {which} was revoked. Ask its issuer for a new one."
        elif said == "access denied":
            what = (
                f"The server recognised {which} but does not allow it to send. Ask the "
                "server's administrator to allow it (by its SHA-256 fingerprint)."
            )
        else:
            what = (
                f"The server refused {which}. It may not be valid for TLS client "
                "authentication, or the server cannot complete its chain: upload it with its "
                "intermediate certificates, or ask the server's administrator what it expects."
            )
        advice = f'{what} (TLS alert "{said}")' if said else what
        kind = "client-certificate-refused"
    reply = (0, f"TLS alert: {said}" if said else "connection closed after the TLS handshake")
    return SmtpProblem(step, advice, kind=kind, reply=reply, temporary=True)


def _client_certificate_reply(
    step: str, reply: tuple[int, str], plan: ConnectionPlan
) -> SmtpProblem:
    """A 4xx or 5xx that names a certificate: a server that checks client certificates after
    the handshake (Postfix's smtpd_tls_req_ccert) answers so."""
    info = plan.client_certificate_info
    kind = "client-certificate-refused"
    if info is None:
        advice = (
            "The server refused to go on without a trusted TLS client certificate, and none "
            "is configured. " + _NO_CLIENT_CERTIFICATE
        )
        kind = "client-certificate-required"
    else:
        advice = (
            f"The server refused to go on with {_which_client_certificate(info)}: it does not "
            "trust it. Ask the server's administrator to trust its issuer or this certificate, "
            "or upload one the server trusts."
        )
    permanent = reply[0] >= 500 and step in ("mail", "rcpt", "data")
    return SmtpProblem(step, advice, kind=kind, reply=reply, temporary=not permanent)


def client_key_problem(plan: ConnectionPlan, *, unreadable: bool) -> SmtpProblem:
    """The client certificate is configured, but its private key cannot be used."""
    info = plan.client_certificate_info
    name = info.subject if info else "(unreadable)"
    if unreadable:
        why = (
            "cannot be decrypted with this machine's keys (SMTP_ENCRYPTION_KEYS or SECRET_KEY "
            "changed)"
        )
    else:
        why = (
            "is not stored for these settings (it is removed when the server, user or the way "
            "the server is verified changes)"
        )
    return policy_problem(
        "settings",
        f"The private key of the client certificate {name} {why}, so the certificate cannot "
        "be presented. Upload the certificate with its key again (Settings -> SMTP, or "
        "manage.py smtp_settings set --client-certificate FILE), or remove the client "
        "certificate (--clear-client-certificate).",
        kind="client-key-unreadable" if unreadable else "client-key-missing",
    )


def client_certificate_unusable(certificate_pem: str, error: BaseException) -> SmtpProblem:
    """The stored certificate and key cannot be loaded together."""
    return policy_problem(
        "settings",
        "The stored client certificate and its private key cannot be used together "
        f"({printable(str(error)) or type(error).__name__}). Upload the certificate with its "
        "key again.",
        kind="client-certificate-unusable",
    )


def starttls_missing(plan: ConnectionPlan) -> SmtpProblem:
    """The server does not offer STARTTLS where the plan requires it, said with the reason the
    plan requires it: the port, require_tls, or a pin or trusted certificate to check."""
    smtps = "Use port 465 or Force SMTPS if the server supports SMTPS"
    if plan.reason == "require_tls is on":
        advice = (
            'The server does not offer STARTTLS, which {"require_tls": true} requires, so '
            f"nothing is sent. {smtps}. Only for a trusted relay: remove require_tls to send "
            "without encryption when STARTTLS is not offered."
        )
    elif plan.reason in ("peer_fingerprint is set", "a trusted certificate is stored"):
        what = "peer_fingerprint" if plan.reason.startswith("peer") else "the trusted certificate"
        advice = (
            f"The server does not offer STARTTLS, so {what} cannot be checked and nothing is "
            f"sent. {smtps}. Only for a trusted relay: remove {what} to send without "
            "encryption when STARTTLS is not offered."
        )
    else:
        advice = (
            f"The server does not offer STARTTLS, which is required on port {plan.port}. "
            f"{smtps}. Only for a trusted local relay: port 25 (STARTTLS only when offered) or "
            '{"auto_tls": false} sends without encryption.'
        )
    return policy_problem("starttls", advice, kind="starttls-missing")


def policy_problem(
    step: str, advice: str, *, kind: str, reply: tuple[int, str] | None = None
) -> SmtpProblem:
    """A refusal of our own making (STARTTLS missing, password would leak, AUTH missing)."""
    return SmtpProblem(step, advice, kind=kind, reply=reply, temporary=True)


# -- OAuth 2.0 ------------------------------------------------------------------------------
# What a provider's token endpoint answers, in words: (meaning, what to do). Microsoft's codes
# are the AADSTS number in error_description; the others are RFC 6749 error codes, which
# Google uses with its own descriptions.
TOKEN_ERRORS: dict[str, tuple[str, str]] = {
    "AADSTS7000215": (
        "the client secret is wrong",
        "Paste the secret's Value (not its Secret ID) from Microsoft Entra admin center -> "
        "App registrations -> the app -> Certificates & secrets, or create a new secret there.",
    ),
    "AADSTS7000222": (
        "the client secret has expired",
        "Create a new client secret under App registrations -> the app -> Certificates & "
        "secrets, paste its Value here, and delete the expired one.",
    ),
    "AADSTS700016": (
        "no application with this client ID exists in this tenant",
        "Check Client ID (the app's Application (client) ID) and Tenant: the app must be "
        "registered in, or consented to by, this tenant.",
    ),
    "AADSTS90002": (
        "the tenant was not found",
        "Check Tenant: enter the Directory (tenant) ID or a verified domain such as "
        "contoso.onmicrosoft.com.",
    ),
    "AADSTS700027": (
        "the certificate's signed assertion was refused: the certificate is not registered "
        "on the app, or the key does not match it, or it has expired",
        "Upload this certificate (its public part) under App registrations -> the app -> "
        "Certificates & secrets -> Certificates, and check that the thumbprint shown there "
        "matches the one shown here.",
    ),
    "unauthorized_client": (
        "the client may not get tokens this way or for this scope",
        "For Google: in the Admin console, Security -> Access and data control -> API "
        "controls -> Manage Domain Wide Delegation, add the service account's client ID with "
        "the scope https://mail.google.com/. For other providers: allow this grant type for "
        "the client.",
    ),
    "invalid_grant": (
        "the grant was refused: the mailbox (subject) is not a user of this domain, the "
        "refresh token was revoked or has expired, or this machine's clock is wrong",
        "Check the mailbox in User (it must be a user of the Workspace domain), enter a new "
        "refresh token if it was revoked, and check that this machine's clock is right (NTP).",
    ),
    "invalid_client": (
        "the client was not recognised, or its secret or key was refused",
        "Check Client ID and the credential; the secret or key may have been deleted or "
        "replaced at the provider.",
    ),
    "invalid_scope": (
        "the scope is not valid for this client",
        "Check Scope: Microsoft 365 needs https://outlook.office365.com/.default, Google "
        "https://mail.google.com/.",
    ),
    "invalid_request": (
        "the provider found the request malformed",
        "Check Tenant, Client ID, Token URL and Scope for stray characters.",
    ),
    "unsupported_grant_type": (
        "the provider does not support this kind of credential",
        "Use a credential the provider supports (a client secret or a refresh token).",
    ),
}
# Errors a provider sends while it is briefly unable to answer: try again later.
TEMPORARY_TOKEN_ERRORS = {"temporarily_unavailable", "server_error", "slow_down"}


def token_error_code(error: str, description: str) -> str:
    """The most specific known code: Microsoft's AADSTS number, else the OAuth error."""
    match = re.search(r"\bAADSTS\d+", description or "")
    if match and match.group() in TOKEN_ERRORS:
        return match.group()
    return error


def token_problem(
    endpoint: str, status: int, error: str, description: str, *, provider: str = ""
) -> SmtpProblem:
    """A token endpoint's refusal, with the provider's code, its meaning and what to do.
    Refused credentials are permanent: no retry fixes them. The provider's error code and
    description stay in the server-reply part, never the request."""
    code = token_error_code(error, description)
    reply = (status, printable(" ".join(f"{error}: {description}".split()))[:600])
    if error in TEMPORARY_TOKEN_ERRORS:
        return SmtpProblem(
            "token",
            f"The token endpoint {endpoint} is temporarily unable to issue a token ({error}); "
            "the message will be retried.",
            kind="token-unavailable",
            reply=reply,
            temporary=True,
        )
    meaning, advice = TOKEN_ERRORS.get(
        code,
        (
            "the provider refused to issue a token",
            "Check Tenant, Client ID, the credential and Scope against the provider's app "
            "registration.",
        ),
    )
    return SmtpProblem(
        "token",
        f"The token endpoint {endpoint} refused to issue a token: {code} means {meaning}. "
        + advice,
        kind=f"token-{code}" if code in TOKEN_ERRORS else "token-refused",
        reply=reply,
        temporary=False,
    )


def token_unreachable(
    endpoint: str, reason: str, *, kind: str = "token-unreachable"
) -> SmtpProblem:
    """The token endpoint is down, slow, or answered 5xx: mail waits and is retried."""
    return SmtpProblem(
        "token",
        f"No token from {endpoint}: {reason}. The message will be retried; if this persists, "
        "check that this machine reaches the provider (firewall, proxy, DNS).",
        kind=kind,
        reply=(0, reason),
        temporary=True,
    )


def token_refused(
    reply: tuple[int, str], mailbox: str, provider: str, *, retried: bool
) -> SmtpProblem:
    """The SMTP server refused AUTH XOAUTH2 with a token the provider had just issued: the
    token is fine, the mailbox's or the app's permissions are not. Like a refused password,
    mail waits for the administrator's fix."""
    code, text = reply
    if "5.7.139" in text:
        advice = (
            f"Microsoft 365 has SMTP AUTH turned off for the organisation or for {mailbox}. "
            "Turn on Authenticated SMTP for the mailbox (Microsoft 365 admin center -> Active "
            "users -> the mailbox -> Mail -> Manage email apps), or for the organisation "
            "(Set-TransportConfig -SmtpClientAuthenticationDisabled $false; for one mailbox: "
            f"Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false)."
        )
        kind = "smtp-auth-disabled"
    elif "5.7.3" in text:
        advice = (
            f"Microsoft 365 accepted the token but not for {mailbox}: the app's service "
            "principal is not registered in Exchange Online (New-ServicePrincipal), it has no "
            "permission on the mailbox (Add-MailboxPermission -AccessRights FullAccess), or the "
            "app lacks the SMTP.SendAsApp permission with admin consent."
        )
        kind = "token-not-authorised"
    elif "5.7.8" in text or provider == "google":
        advice = (
            f"Google refused the token for {mailbox}: User must be the mailbox the service "
            "account acts for (the subject of domain-wide delegation), a Gmail user of the "
            "Workspace domain, and the delegation must include https://mail.google.com/."
        )
        kind = "token-not-authorised"
    else:
        advice = (
            f"The server refused the OAuth 2.0 token for {mailbox}. Check that User is the "
            "mailbox the token may send as, and that the token's scope covers SMTP."
        )
        kind = "token-not-authorised"
    if retried:
        advice += " The cached token was refused, and a new one was fetched and refused too."
    return SmtpAuthenticationProblem("auth", advice, kind=kind, reply=(code, text), temporary=True)
