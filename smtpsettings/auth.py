"""Signing in to the SMTP server: a small strategy beside the transport.

`PasswordAuthenticator` is the user name and password (CRAM-MD5, PLAIN, LOGIN);
`XOAuth2Authenticator` is `AUTH XOAUTH2` with an OAuth 2.0 bearer token. Both keep the rule
that no secret crosses the network unencrypted to a remote host, and neither lets its secret
reach a log, a transcript step or a problem's text: a step says only the mechanism and the
user.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from gatewaymgr.untrusted import printable

from .hostnames import is_loopback
from .plan import ConnectionPlan, Security
from .problems import SmtpProblem, policy_problem, token_refused

if TYPE_CHECKING:
    from .transport import Step

# smtplib tries these in this order too; CRAM-MD5 first because it never sends the password.
AUTH_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")

# The transport's step runner: times a step, reports it, and explains what failed in it.
RunStep = Callable[[str], AbstractContextManager["Step"]]


class Authenticator(Protocol):
    mechanism: str  # what signed in, once it did

    def sign_in(self, smtp: smtplib.SMTP, plan: ConnectionPlan, run_step: RunStep) -> None: ...


def _text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return printable(" ".join(text.split()))


def _offered(smtp: smtplib.SMTP) -> list[str]:
    return smtp.esmtp_features.get("auth", "").upper().split()


def require_encryption(smtp: smtplib.SMTP, plan: ConnectionPlan, what: str, kind: str) -> None:
    """No secret goes unencrypted to a remote host (loopback stays on this machine)."""
    encrypted = isinstance(smtp.sock, ssl.SSLSocket)
    if plan.refusal or not (encrypted or is_loopback(plan.host)):
        raise policy_problem(
            "auth", plan.refusal or f"The {what} would cross the network unencrypted.", kind=kind
        )


# What the server answers to a mechanism it does not support, as opposed to credentials it
# refuses (535): 504 unrecognized, 534 too weak, 538 needs encryption (RFC 4954).
MECHANISM_UNSUPPORTED = frozenset({504, 534, 538})


def _no_auth_offered(smtp: smtplib.SMTP, plan: ConnectionPlan) -> SmtpProblem:
    advice = (
        "The server does not offer authentication (AUTH) on this connection. Leave User "
        "blank if the server needs no sign-in"
    )
    if isinstance(smtp.sock, ssl.SSLSocket):
        advice += "; otherwise check that Port is the server's submission port (587 or 465)."
    elif plan.security is Security.PLAIN:  # auto_tls is off: STARTTLS was never tried
        advice += (
            "; many servers offer AUTH only after STARTTLS, which auto_tls: false turns off: "
            'remove auto_tls: false, or set {"require_tls": true} to require STARTTLS.'
        )
    else:  # opportunistic TLS, and the server offered no STARTTLS
        advice += (
            "; many servers offer AUTH only after STARTTLS, which this server does not offer "
            "on this port: try port 587 or 465."
        )
    return policy_problem("auth", advice, kind="auth-missing")


class NoSignIn:
    """Authentication "None": the server is used without AUTH, even with a User filled in."""

    mechanism = ""

    def sign_in(self, smtp: smtplib.SMTP, plan: ConnectionPlan, run_step: RunStep) -> None:
        return None


class PasswordAuthenticator:
    """The user name and password, with the first mechanism both sides support."""

    def __init__(self, username: str, password: str, *, missing: str = "") -> None:
        self.username = username
        self._password = password
        # Why there is no password to sign in with: the connection still runs up to AUTH, so
        # a test shows the TLS steps, then stops with this instead of blaming the credentials.
        self._missing = missing
        self.mechanism = ""

    def __repr__(self) -> str:
        return f"<PasswordAuthenticator {self.username}>"

    def sign_in(self, smtp: smtplib.SMTP, plan: ConnectionPlan, run_step: RunStep) -> None:
        with run_step("auth") as step:
            self._authenticate(smtp, plan, step)

    def _authenticate(self, smtp: smtplib.SMTP, plan: ConnectionPlan, step: Step) -> None:
        if self._missing:
            raise policy_problem("auth", self._missing, kind="password-missing")
        require_encryption(smtp, plan, "password", "password-unencrypted")
        offered = _offered(smtp)
        if not offered:  # no AUTH line, or one that lists no mechanism
            raise _no_auth_offered(smtp, plan)
        mechanisms = [m for m in AUTH_MECHANISMS if m in offered]
        if not mechanisms:
            raise policy_problem(
                "auth",
                f"The server offers only AUTH {' '.join(offered)}, none of which this product "
                f"supports ({', '.join(AUTH_MECHANISMS)}).",
                kind="auth-unsupported",
            )
        smtp.user, smtp.password = self.username, self._password
        try:
            error: smtplib.SMTPAuthenticationError | None = None
            for mechanism in mechanisms:
                method = getattr(smtp, "auth_" + mechanism.lower().replace("-", "_"))
                try:
                    code, reply = smtp.auth(mechanism, method, initial_response_ok=True)
                except smtplib.SMTPAuthenticationError as refused:
                    # Only "this mechanism is unsupported" is worth another mechanism; after
                    # a 535 another one would be a second failed sign-in with the same
                    # password (counted against the account, and delayed by Dovecot).
                    if refused.smtp_code not in MECHANISM_UNSUPPORTED:
                        raise
                    error = refused
                    continue
                self.mechanism = mechanism
                step.detail = f"{mechanism} as {self.username}"
                step.reply = f"{code} {_text(reply)}"
                return
            raise error  # type: ignore[misc]
        finally:
            smtp.user = smtp.password = ""  # the password lives no longer than needed


class TokenSource(Protocol):
    """Where the XOAUTH2 authenticator gets its bearer token (smtpsettings.tokencache)."""

    provider: str

    def get(self, step: Step) -> tuple[str, bool]:
        """(access token, whether it came from the shared cache); fills in the Token step."""

    def invalidate(self, token: str) -> None:
        """The server rejected `token`: nobody may use it again."""


def xoauth2_response(mailbox: str, token: str) -> str:
    """The initial client response of AUTH XOAUTH2 (Google's and Microsoft's SASL XOAUTH2)."""
    raw = f"user={mailbox}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(raw.encode("utf-8")).decode("ascii")


class XOAuth2Authenticator:
    """`AUTH XOAUTH2` as the mailbox, with a token from `tokens`. A cached token the server
    rejects (it was revoked, or the server's clock is ahead) is dropped, and one fresh token
    is tried once before giving up."""

    mechanism_name = "XOAUTH2"

    def __init__(self, mailbox: str, tokens: TokenSource) -> None:
        self.mailbox = mailbox
        self._tokens = tokens
        self.mechanism = ""

    def __repr__(self) -> str:
        return f"<XOAuth2Authenticator {self.mailbox}>"

    def sign_in(self, smtp: smtplib.SMTP, plan: ConnectionPlan, run_step: RunStep) -> None:
        refusal = self._refusal(smtp, plan)
        if refusal is not None:  # before any token is fetched: it would go nowhere
            with run_step("auth"):
                raise refusal
        for attempt in (1, 2):
            with run_step("token") as step:
                token, cached = self._tokens.get(step)
            with run_step("auth") as step:
                step.detail = f"XOAUTH2 as {self.mailbox}"
                code, reply = self._attempt(smtp, token)
                step.reply = f"{code} {reply}"
                if code == 235:
                    self.mechanism = self.mechanism_name
                    return
                if code == 535 and cached and attempt == 1:
                    self._tokens.invalidate(token)
                    step.ok = False
                    step.detail += ": the server rejected the cached token; fetching a new one"
                    continue
                raise token_refused(
                    (code, reply), self.mailbox, self._tokens.provider, retried=attempt == 2
                )

    def _refusal(self, smtp: smtplib.SMTP, plan: ConnectionPlan) -> SmtpProblem | None:
        try:
            require_encryption(smtp, plan, "access token", "token-unencrypted")
        except SmtpProblem as problem:
            return problem
        offered = _offered(smtp)
        if not offered:
            return _no_auth_offered(smtp, plan)
        if self.mechanism_name not in offered:
            return policy_problem(
                "auth",
                f"The server offers only AUTH {' '.join(offered)}, not XOAUTH2, so it "
                "cannot sign in with an OAuth 2.0 token. Check Server and Port (Microsoft "
                "365: smtp.office365.com port 587; Google: smtp.gmail.com port 587), or "
                "choose Password.",
                kind="auth-unsupported",
            )
        return None

    def _attempt(self, smtp: smtplib.SMTP, token: str) -> tuple[int, str]:
        code, reply = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2_response(self.mailbox, token))
        if code == 334:
            # The server's challenge is a base64 JSON error (Google); an empty line ends the
            # exchange and brings the final reply.
            code, reply = smtp.docmd("")
        return code, _text(reply)
