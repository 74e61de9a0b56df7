"""One access token for every worker: the shared cache with single-flight refresh.

The token lives in an `OAuthAccessToken` row keyed by what it is for (provider, endpoint,
client, mailbox, scope and a hash of the credential), sealed at rest with the key ring. A
worker that finds it missing or about to expire locks the row (SELECT ... FOR UPDATE on
PostgreSQL; on SQLite the IMMEDIATE transaction serialises writers) and looks again before
asking the provider: so N workers starting at once make one token request, not N.

A refresh token the provider rotates is written back in the same short transaction, before
the token is used: a later failure (the SMTP server refusing, the worker dying) never loses
it. The write is conditional on the stored credential being the one used, so a concurrent
save of new settings is never overwritten.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from . import keyring, oauth
from .models import OAuthAccessToken, SmtpSettings, WrongServerPassword
from .problems import SmtpProblem, policy_problem

if TYPE_CHECKING:
    from .transport import Step

log = logging.getLogger(__name__)

CREDENTIAL = "oauth_credential_token"
MAX_MARGIN = datetime.timedelta(minutes=5)
MIN_LEFT = datetime.timedelta(seconds=1)  # an old token with less left is not used
WAIT_STEP = 0.05  # seconds between looks while another worker fetches the token
# Sent after each request to the provider, with ok=True or False: the health app counts them
# for /metrics (gatewaymgr_oauth_token_refreshes_total).
token_refreshed = Signal()


def refresh_margin(lifetime: datetime.timedelta) -> datetime.timedelta:
    """How long before expiry a token is replaced: 10% of its lifetime, at most 5 minutes
    (so an hour's token is renewed 5 minutes early, a 10-second one 1 second early)."""
    return min(MAX_MARGIN, lifetime / 10)


def usable(row: OAuthAccessToken, now: datetime.datetime) -> bool:
    if not (row.token and row.expires_at and row.fetched_at):
        return False
    return row.expires_at - now > refresh_margin(row.expires_at - row.fetched_at)


USE, WAIT, FETCH = "use", "wait", "fetch"


def decide(row: OAuthAccessToken, token: str, now: datetime.datetime) -> str:
    """Use the stored token, wait for the worker that is fetching one, or fetch one.

    A lease is `fetched_at` in the future: a worker is asking the provider until then.
    Meanwhile the old token serves while it lasts; once none is left, the others wait."""
    if row.fetched_at and row.fetched_at > now:
        alive = token and row.expires_at and row.expires_at - now > MIN_LEFT
        return USE if alive else WAIT
    return USE if token and usable(row, now) else FETCH


def cache_key(record: Any, endpoint: str, credential: dict[str, str]) -> str:
    """SHA-256 of what the token is bound to. A refresh token is one credential across its
    rotations, so its value is left out; any other credential's value is hashed in."""
    kind = credential.get("kind", "")
    value = "" if kind == "refresh_token" else credential.get("value", "")
    binding = [
        record.oauth_provider,
        endpoint,
        record.oauth_client_id,
        record.username,
        oauth.token_scope(record),
        kind,
        hashlib.sha256(value.encode("utf-8")).hexdigest(),
    ]
    return hashlib.sha256(json.dumps(binding).encode("utf-8")).hexdigest()


def reveal_credential(record: SmtpSettings) -> dict[str, str]:
    """The stored credential as {"kind", "value"}, or a problem that says what to do."""
    try:
        credential = record.reveal_secret(CREDENTIAL)
    except keyring.Undecryptable:
        raise policy_problem(
            "token",
            "The stored OAuth 2.0 credential cannot be decrypted with the current keys "
            "(SECRET_KEY or SMTP_ENCRYPTION_KEYS changed since it was saved). Enter it again.",
            kind="credential-unreadable",
        ) from None
    except WrongServerPassword:
        raise policy_problem(
            "token",
            "The stored OAuth 2.0 credential was saved for another server, token endpoint, "
            "tenant or client ID, and goes only where it was meant to. Enter it again.",
            kind="credential-other-settings",
        ) from None
    if not isinstance(credential, dict) or not credential.get("value"):
        raise policy_problem(
            "token",
            "No OAuth 2.0 credential is stored: enter the client secret, certificate, "
            "service-account key or refresh token on Settings -> SMTP.",
            kind="credential-missing",
        )
    return {"kind": str(credential.get("kind", "")), "value": str(credential["value"])}


class SharedTokens:
    """The XOAUTH2 authenticator's token source for one settings record."""

    def __init__(self, record: SmtpSettings, *, timeout: float) -> None:
        self.record = record
        self.provider = record.oauth_provider
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"<SharedTokens {self.provider} {self.record.username}>"

    def _binding(self) -> tuple[str, str, dict[str, str]]:
        credential = reveal_credential(self.record)
        endpoint = oauth.resolved_endpoint(self.record, credential)
        return cache_key(self.record, endpoint, credential), endpoint, credential

    def get(self, step: Step) -> tuple[str, bool]:
        """(token, whether it came from the cache). Fills in the Token step: endpoint,
        HTTP status, time, lifetime and scope; never the token."""
        key, endpoint, credential = self._binding()
        while True:
            row = OAuthAccessToken.objects.filter(key=key).first()  # a read: no lock
            token = self._open(row) if row is not None else ""
            action = decide(row, token, timezone.now()) if row is not None else FETCH
            if action == FETCH:
                now = timezone.now()
                with transaction.atomic():  # short: no transaction is open during HTTP
                    OAuthAccessToken.objects.get_or_create(key=key)
                    row = OAuthAccessToken.objects.select_for_update().get(key=key)
                    token = self._open(row)
                    action = decide(row, token, now)  # again, under the lock
                    if action == FETCH:  # take the lease: the others wait for this request
                        previous, lease = row.fetched_at, now + self._lease()
                        row.fetched_at = lease
                        row.save(update_fields=["fetched_at"])
            if action == USE:
                _describe_cached(step, endpoint, row)
                return token, True
            if action == FETCH:
                break
            time.sleep(WAIT_STEP)  # another worker is fetching: its token will do
        exchange = oauth.Exchange(endpoint)
        started = timezone.now()
        try:
            credential, sealed = self._current_credential(credential)
            issued = oauth.request_token(self.record, credential, exchange, timeout=self._timeout)
        except BaseException:
            # Give the lease back at once, so the next worker need not wait for it to run out.
            OAuthAccessToken.objects.filter(key=key, fetched_at=lease).update(fetched_at=previous)
            token_refreshed.send(sender=SharedTokens, ok=False)
            raise
        token_refreshed.send(sender=SharedTokens, ok=True)
        if issued.refresh_token:
            with transaction.atomic():  # at once, on its own: nothing later can lose it
                self._store_rotated(sealed, issued.refresh_token)
        with transaction.atomic():
            OAuthAccessToken.objects.filter(key=key).update(
                token=keyring.encrypt(issued.access_token),
                fetched_at=started,
                expires_at=started + datetime.timedelta(seconds=issued.lifetime),
                scope=issued.scope[:500],
            )
            # Tokens of credentials no longer in use (a test run's, a replaced secret's).
            OAuthAccessToken.objects.filter(expires_at__lt=started).exclude(key=key).delete()
        step.detail = (
            f"{endpoint}: HTTP {exchange.status} in {exchange.seconds * 1000:.0f} ms; a token "
            f"valid for {issued.lifetime} s, scope {issued.scope or '(none stated)'}"
        )
        step.reply = f"{exchange.status} OK" if exchange.status == 200 else str(exchange.status)
        return issued.access_token, False

    def _lease(self) -> datetime.timedelta:
        """How long others wait for this worker's request before trying themselves (it may
        have died): the request's timeout and a little more."""
        return datetime.timedelta(seconds=self._timeout + 5)

    def invalidate(self, token: str) -> None:
        """The server rejected `token`: drop it, unless another worker replaced it already."""
        key = self._binding()[0]
        with transaction.atomic():
            row = OAuthAccessToken.objects.select_for_update().filter(key=key).first()
            if row is not None and self._open(row) == token:
                row.token, row.expires_at = "", None
                row.save(update_fields=["token", "expires_at"])

    @staticmethod
    def _open(row: OAuthAccessToken) -> str:
        try:
            return keyring.decrypt(row.token) if row.token else ""
        except keyring.Undecryptable:
            return ""  # sealed under a key that is gone: fetch a new one

    def _current_credential(self, credential: dict[str, str]) -> tuple[dict[str, str], str]:
        """The credential as stored now (a refresh token another worker rotated since this
        record was read), with its sealed form for the conditional write."""
        sealed = self.record.oauth_credential_token
        if credential["kind"] != "refresh_token" or self.record._state.adding:
            return credential, sealed  # an unsaved test run uses what it was given
        stored = (
            SmtpSettings.objects.filter(pk=self.record.pk)
            .values_list(CREDENTIAL, flat=True)
            .first()
        )
        if stored and stored != sealed:
            current = copy.copy(self.record)
            current.oauth_credential_token = stored
            try:
                return reveal_credential(current), stored
            except SmtpProblem:
                pass  # sealed for other settings: a save is under way; use ours
        return credential, sealed

    def _store_rotated(self, sealed: str, refresh_token: str) -> None:
        holder = copy.copy(self.record)
        holder.seal_secret(CREDENTIAL, {"kind": "refresh_token", "value": refresh_token})
        stored = SmtpSettings.objects.filter(pk=1, oauth_credential_token=sealed).update(
            oauth_credential_token=holder.oauth_credential_token
        )
        if stored:
            self.record.oauth_credential_token = holder.oauth_credential_token
        else:
            log.warning(
                "The provider rotated the refresh token, but the stored credential changed "
                "meanwhile (a new one was saved); the rotated one was not stored."
            )


def _describe_cached(step: Step, endpoint: str, row: OAuthAccessToken) -> None:
    remaining = int((row.expires_at - timezone.now()).total_seconds())
    lifetime = int((row.expires_at - row.fetched_at).total_seconds())
    step.detail = (
        f"a cached token from {endpoint}, valid for another {remaining} s of {lifetime} s, "
        f"scope {row.scope or '(none stated)'}"
    )
    step.reply = "cached"
