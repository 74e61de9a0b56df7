"""The keys that encrypt secrets at rest (Fernet, from `cryptography`): the SMTP password, and
the messages waiting in the outbox (which carry invitation links).

With `SMTP_ENCRYPTION_KEYS` set, its first key encrypts and every key decrypts. Without it,
keys are derived from `SECRET_KEY` and `SECRET_KEY_FALLBACKS`, so rotating the secret key
the Django way keeps the password readable. The derived keys also stay readable after
`SMTP_ENCRYPTION_KEYS` is introduced, so `rotate_smtp_key` can move the password over.
"""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

_SALT = b"gatewaymgr.smtpsettings"
_INFO = b"smtp-password-encryption"


class Undecryptable(Exception):
    """No key of the key ring decrypts a stored value."""

    def __init__(self, message: str = "") -> None:
        super().__init__(
            message
            or "The stored value cannot be decrypted with the current keys (SECRET_KEY or "
            "SMTP_ENCRYPTION_KEYS changed since it was saved)."
        )


class UndecryptablePassword(Undecryptable):
    """No key of the key ring decrypts the stored password."""

    def __init__(self) -> None:
        super().__init__(
            "The stored SMTP password cannot be decrypted with the current keys "
            "(SECRET_KEY or SMTP_ENCRYPTION_KEYS changed since it was saved). "
            "Enter the password again."
        )


def derive_key(secret: str) -> bytes:
    """A Fernet key derived from a Django secret key."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode("utf-8")))


def _configured_keys(configured: tuple) -> list[Fernet]:
    keys = []
    for position, key in enumerate(configured, start=1):
        try:
            keys.append(Fernet(key.strip()))
        except (ValueError, TypeError):
            raise ImproperlyConfigured(
                f"Key {position} of SMTP_ENCRYPTION_KEYS is not a Fernet key. Generate one "
                "with: python manage.py rotate_smtp_key --generate"
            ) from None
    return keys


def key_ring() -> MultiFernet:
    """The ring for the current settings. Built once per set of keys: deriving a key costs
    more than encrypting a message, and the outbox seals every message it stores. Keyed on
    the settings' values, so changing them (rotation, tests' overrides) gives the new ring."""
    return _ring_for(
        settings.SECRET_KEY,
        tuple(settings.SECRET_KEY_FALLBACKS),
        tuple(getattr(settings, "SMTP_ENCRYPTION_KEYS", [])),
    )


@functools.lru_cache(maxsize=8)
def _ring_for(secret: str, fallbacks: tuple, configured: tuple) -> MultiFernet:
    derived = [Fernet(derive_key(s)) for s in (secret, *fallbacks)]
    return MultiFernet(_configured_keys(configured) + derived)


def encrypt(plaintext: str) -> str:
    return key_ring().encrypt(plaintext.encode("utf-8")).decode("ascii")


def decrypt(token: str) -> str:
    try:
        return key_ring().decrypt(token.encode("ascii")).decode("utf-8")
    except (InvalidToken, UnicodeError):
        raise UndecryptablePassword() from None


def encrypt_bytes(data: bytes) -> bytes:
    """`data` as a Fernet token (URL-safe base64, so it fits a text column as ASCII)."""
    return key_ring().encrypt(data)


def decrypt_bytes(token: bytes) -> bytes:
    try:
        return key_ring().decrypt(token)
    except InvalidToken:
        raise Undecryptable() from None


def reencrypt_bytes(token: bytes) -> bytes:
    """The same data under the newest key."""
    try:
        return key_ring().rotate(token)
    except InvalidToken:
        raise Undecryptable() from None


def reencrypt(token: str) -> str:
    """The same plaintext under the newest key."""
    try:
        return key_ring().rotate(token.encode("ascii")).decode("ascii")
    except (InvalidToken, UnicodeError):
        raise UndecryptablePassword() from None


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")
