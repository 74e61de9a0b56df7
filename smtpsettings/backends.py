"""A Django e-mail backend that sends with the SMTP settings stored on Settings -> SMTP.

    EMAIL_BACKEND = "smtpsettings.backends.StoredSettingsBackend"

It keeps Django's open(), close() and send_messages() semantics, including fail_silently,
and reads the stored settings once per connection. A message whose From is empty or
DEFAULT_FROM_EMAIL is sent from the stored sender address and name; the stored Reply-To is set
on a message that has none, and the stored bounce address is the envelope sender (MAIL FROM).
Failures raise `smtpsettings.problems.SmtpProblem`, an `smtplib.SMTPException` that says what
to do; a refused sign-in, sender or recipients is also smtplib's SMTPAuthenticationError,
SMTPSenderRefused or SMTPRecipientsRefused, with their attributes, as Django's backend raises.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.utils import parseaddr

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import sanitize_address
from django.utils.encoding import force_str

from . import oauth, store
from .auth import Authenticator, NoSignIn, PasswordAuthenticator, XOAuth2Authenticator
from .keyring import UndecryptablePassword
from .models import SmtpSettings, WrongServerPassword
from .options import OptionsError
from .plan import ConnectionPlan
from .problems import SmtpProblem, client_key_problem, policy_problem
from .tokencache import SharedTokens
from .transport import Outgoing, SmtpTransport

log = logging.getLogger(__name__)
# A bare dot-atom address, which sanitize_address() would return unchanged: most recipients.
_PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)


def envelope_address(address: str, encoding: str) -> str:
    """The bare address for MAIL FROM / RCPT TO, as Django's SMTP backend would send it: an
    international domain in punycode. `address` may be a lazy translation (Django's ticket
    24416)."""
    address = force_str(address)
    if _PLAIN_ADDRESS.fullmatch(address):
        return address
    return parseaddr(sanitize_address(address, encoding))[1]


def transport_for(record: SmtpSettings, **kwargs) -> SmtpTransport:
    """A transport for the stored settings, or an SmtpProblem that says what to fix."""
    try:
        plan = record.connection_plan()
    except OptionsError as error:
        raise policy_problem(
            "settings", f"The stored SMTP options are invalid: {error}", kind="settings"
        ) from None
    if plan is None:
        raise policy_problem(
            "settings",
            "No SMTP server is configured: fill in Server on Settings -> SMTP.",
            kind="settings",
        )
    kwargs["client_key"] = reveal_client_key(record, plan)
    return SmtpTransport(plan, authenticator=authenticator_for(record, plan), **kwargs)


def authenticator_for(record: SmtpSettings, plan: ConnectionPlan) -> Authenticator | None:
    """How to sign in, as the record's Authentication says."""
    if record.auth_method == "none":
        return NoSignIn()
    if record.auth_method == "oauth2":
        if not plan.username:
            raise policy_problem(
                "settings",
                "OAuth 2.0 signs in as a mailbox: enter the mailbox to send as in User.",
                kind="settings",
            )
        missing = oauth.missing_settings(record)
        if missing:
            raise policy_problem("settings", missing, kind="settings")
        tokens = SharedTokens(record, timeout=plan.options.timeout)
        return XOAuth2Authenticator(plan.username, tokens)
    if not plan.username:
        return None  # a blank user signs in to nothing, as the help text says
    missing = ""
    try:
        password = record.reveal_password()
    except UndecryptablePassword as error:
        raise policy_problem("settings", str(error), kind="password-unreadable") from None
    except WrongServerPassword as error:
        password, missing = "", f"No password is stored for these values. {error}"
    if not password and not missing:
        # Signing in with an empty password would fail as "wrong credentials", which blames
        # the wrong thing.
        missing = (
            f"No password is stored for these values, so Gateway Manager cannot sign in as "
            f"{plan.username}. Enter the password on Settings -> SMTP, or clear User if the "
            "server needs no sign-in."
        )
    return PasswordAuthenticator(plan.username, password, missing=missing)


def reveal_client_key(record: SmtpSettings, plan: ConnectionPlan) -> str:
    """The client certificate's private key, for the TLS context only; "" when no certificate
    is presented. A certificate whose key cannot be used stops here, said in words: sending
    without it would only fail later, less clearly."""
    if not (plan.client_certificate and plan.encrypted):
        return ""
    try:
        key = record.reveal_secret("client_key_token")
    except UndecryptablePassword:
        raise client_key_problem(plan, unreadable=True) from None
    except WrongServerPassword:
        key = ""
    if not key:
        raise client_key_problem(plan, unreadable=False)
    return str(key)


def sender_of(record: SmtpSettings) -> str:
    """The From header for the stored sender: "Name <address>" or the address alone."""
    if record.sender_name:
        return str(Address(display_name=record.sender_name, addr_spec=record.sender_email))
    return record.sender_email


@dataclass(frozen=True)
class Addressing:
    """What the stored settings put on every message the product sends."""

    sender: str  # the From of a message that names none (or DEFAULT_FROM_EMAIL)
    reply_to: str = ""  # Reply-To, unless the message has its own
    bounce: str = ""  # the envelope sender (MAIL FROM); blank: the From's address


def addressing_of(record: SmtpSettings) -> Addressing:
    return Addressing(sender_of(record), record.reply_to, record.bounce_address)


def addressed(message: EmailMessage, addressing: Addressing) -> EmailMessage:
    """The message as it goes out: the stored sender and Reply-To where the caller gave none.
    A copy when anything changes: the caller's message stays as it was."""
    default_from = message.from_email in ("", None, settings.DEFAULT_FROM_EMAIL)
    own_reply_to = message.reply_to or any(
        name.lower() == "reply-to" for name in message.extra_headers
    )
    set_from = default_from and addressing.sender
    set_reply_to = addressing.reply_to and not own_reply_to
    if not (set_from or set_reply_to):
        return message
    message = copy.copy(message)
    if set_from:
        message.from_email = addressing.sender
    if set_reply_to:
        message.reply_to = [addressing.reply_to]
    return message


def envelope_sender(message: EmailMessage, addressing: Addressing) -> str:
    """MAIL FROM: the stored bounce address, else the From's bare address."""
    encoding = message.encoding or settings.DEFAULT_CHARSET
    return envelope_address(addressing.bounce or message.from_email, encoding)


class StoredSettingsBackend(BaseEmailBackend):
    def __init__(self, fail_silently: bool = False, **kwargs) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.transport: SmtpTransport | None = None
        self._partial_transport: SmtpTransport | None = None
        self._addressing = Addressing("")
        self._senders: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()

    def open(self) -> bool | None:
        """Connect with the stored settings. True if a new connection was made, False if
        one was open already, None if it failed silently."""
        if self.transport is not None:
            return False
        # Like Django 5.2.15+: a connection that failed half-way is closed, never reused.
        if self._partial_transport is not None:
            self._partial_transport.close()
            self._partial_transport = None
        try:
            record = store.load()
            self._partial_transport = transport_for(record)
            self._addressing = addressing_of(record)
            self._senders.clear()
            self._partial_transport.open()
            self.transport, self._partial_transport = self._partial_transport, None
            return True
        except OSError:  # SmtpProblem and smtplib's errors are OSErrors
            if not self.fail_silently:
                raise
            return None

    def close(self) -> None:
        for name in ("_partial_transport", "transport"):
            transport = getattr(self, name)
            setattr(self, name, None)
            if transport is not None:
                transport.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not email_messages:
            return 0
        with self._lock:
            new_connection = self.open()
            if self.transport is None or new_connection is None:
                return 0
            sent = 0
            messages = list(email_messages)
            # Messages are built ahead: the next one before a message goes, so its envelope
            # can travel with that message's final dot (PIPELINING), and the one after it
            # while the server answers. One that cannot be built fails in its turn.
            built: dict[int, Outgoing | None] = {}

            def build(index: int) -> None:
                if index < len(messages) and index not in built:
                    built[index] = self._try_outgoing(messages[index])

            try:
                for index, message in enumerate(messages):
                    outgoing = built.pop(index, None) or self._outgoing(message)
                    build(index + 1)
                    following = built.get(index + 1)
                    if self._send(outgoing, following, lambda i=index + 2: build(i)):
                        sent += 1
            finally:
                if new_connection:
                    self.close()
        return sent

    def _try_outgoing(self, message: EmailMessage) -> Outgoing | None:
        try:
            return self._outgoing(message)
        except Exception:
            return None

    def _outgoing(self, message: EmailMessage) -> Outgoing | None:
        """The envelope and bytes of `message`; None when it has no recipients."""
        if not message.recipients():
            return None
        message = addressed(message, self._addressing)
        encoding = message.encoding or settings.DEFAULT_CHARSET
        key = (force_str(message.from_email), encoding)
        if key not in self._senders:  # one sender for thousands of messages: parse it once
            self._senders[key] = envelope_sender(message, self._addressing)
        envelope_from = self._senders[key]
        recipients = [envelope_address(address, encoding) for address in message.recipients()]
        data = message.message().as_bytes(linesep="\r\n")
        return Outgoing(envelope_from, recipients, data)

    def _send(
        self, outgoing: Outgoing | None, following: Outgoing | None, meanwhile: Callable
    ) -> bool:
        if outgoing is None:
            return False
        try:
            refused = self.transport.send(*outgoing, following=following, meanwhile=meanwhile)
        except SmtpProblem:
            if not self.fail_silently:
                raise
            return False
        if refused:
            log.warning(
                "Recipients refused: %s",
                ", ".join(f"{a} ({c} {t})" for a, (c, t) in refused.items()),
            )
        return True
