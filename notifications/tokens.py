"""API tokens: created once, stored as a SHA-256 hash, looked up by that hash.

A token has 256 bits of randomness, so a plain SHA-256 is enough (no salt, no slow hash:
nothing to guess), and looking it up by its hash means no comparison on secrets at all.
The "gm_" prefix makes a leaked token recognisable to secret scanners and to people.
"""

from __future__ import annotations

import datetime
import hashlib
import secrets

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection
from django.utils import timezone

from .models import ApiToken

PREFIX = "gm_"
SHOWN = 10  # characters of a token kept in clear to recognise it by: "gm_" and 7 more
# "Last used" is kept to the minute: writing it on every request would make each API request
# one more write transaction, which on SQLite queues behind every other writer.
LAST_USED_PRECISION = datetime.timedelta(minutes=1)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(name: str, created_by: AbstractBaseUser | None, nonce: str = "") -> tuple[ApiToken, str]:
    """A new token and its secret, which is never stored and can only be shown now."""
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        name=name,
        prefix=secret[:SHOWN],
        hash=digest(secret),
        created_by=created_by,
        nonce=nonce,
    )
    return token, secret


def bearer(authorization: str) -> str | None:
    """The token in an Authorization header value, or None when it names no bearer token."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def authenticate(secret: str | None) -> ApiToken | None:
    """The active token `secret` is, or None; records when it was last used (to the minute)."""
    if not secret or len(secret) > 200:
        return None
    # A raw query: compiling the ORM's cost five times running it, on every API request.
    table = connection.ops.quote_name(ApiToken._meta.db_table)
    found = ApiToken.objects.raw(
        f"SELECT * FROM {table} WHERE hash = %s AND revoked_at IS NULL", [digest(secret)]
    )
    token = next(iter(found), None)
    if token is not None:
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
    return token


def revoke(token: ApiToken) -> bool:
    """Revoke `token`; False when it already was."""
    return bool(
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
    )
