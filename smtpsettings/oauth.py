"""OAuth 2.0 access tokens for SMTP AUTH XOAUTH2: which endpoint, which credential, and what
may be shown of it.

The grant requests and the JWT signing are Authlib's (its httpx OAuth client); this module
only decides what to ask for and translates what the provider answered into advice.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings

from .certificates import colon_hex, describe

MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

CREDENTIAL_KINDS = ("client_secret", "certificate", "service_account", "refresh_token")
MAX_CREDENTIAL_CHARS = 64_000
_KEY_BLOCK = re.compile(r"-----BEGIN ((?:RSA |EC )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


class InvalidCredential(ValueError):
    """The credential cannot be used; the message says why and what to paste instead."""


# -- where tokens come from ------------------------------------------------------------------


def microsoft_authority() -> str:
    return getattr(settings, "OAUTH_MICROSOFT_AUTHORITY", DEFAULT_AUTHORITY).rstrip("/")


def token_endpoint(record: Any) -> str:
    """The token URL for the settings in `record` ("" while it cannot be known)."""
    provider = record.oauth_provider
    if provider == "microsoft":
        tenant = (record.oauth_tenant or "").strip()
        return f"{microsoft_authority()}/{tenant}/oauth2/v2.0/token" if tenant else ""
    if provider == "google":
        info = record.oauth_credential_info or {}
        return info.get("token_uri") or GOOGLE_TOKEN_URI
    return (record.oauth_token_url or "").strip()


def default_scope(provider: str) -> str:
    return {"microsoft": MICROSOFT_SCOPE, "google": GOOGLE_SCOPE}.get(provider, "")


def token_scope(record: Any) -> str:
    return (record.oauth_scope or "").strip() or default_scope(record.oauth_provider)


# -- credentials ---------------------------------------------------------------------------


def x5t(certificate: x509.Certificate) -> str:
    """The certificate's SHA-1 thumbprint, base64url without padding, as the JWT header
    `x5t` carries it (RFC 7515 section 4.1.7; what Microsoft's certificate credential needs)."""
    digest = certificate.fingerprint(hashes.SHA1())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def load_certificate_credential(pem: str) -> tuple[x509.Certificate, Any]:
    """The certificate and its private key from one PEM text, or InvalidCredential."""
    if len(pem) > MAX_CREDENTIAL_CHARS:
        raise InvalidCredential(
            f"This is {len(pem):,} characters long; a certificate with its key is at most "
            f"{MAX_CREDENTIAL_CHARS:,}."
        )
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidCredential(
            "This is not a PEM certificate: paste the certificate (-----BEGIN CERTIFICATE-----) "
            "followed by its private key (-----BEGIN PRIVATE KEY-----)."
        )
    if "PRIVATE KEY-----" not in pem:
        raise InvalidCredential(
            "The private key is missing: paste the certificate followed by its private key "
            "(-----BEGIN PRIVATE KEY-----), in one PEM text."
        )
    if "ENCRYPTED PRIVATE KEY" in pem or "Proc-Type: 4,ENCRYPTED" in pem:
        raise InvalidCredential(
            "The private key is protected by a passphrase. Export it without one, for example "
            "with: openssl pkey -in key.pem -out plain-key.pem"
        )
    data = pem.encode("utf-8")
    try:
        certificate = x509.load_pem_x509_certificates(data)[0]
    except ValueError as error:
        raise InvalidCredential(f"The certificate cannot be read ({error}).") from None
    block = _KEY_BLOCK.search(pem)
    try:
        if block is None:
            raise ValueError("no complete key block")
        key = serialization.load_pem_private_key(block.group().encode("utf-8"), password=None)
    except (ValueError, TypeError) as error:
        raise InvalidCredential(f"The private key cannot be read ({error}).") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise InvalidCredential("The private key must be an RSA or EC key.")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise InvalidCredential(
            "The private key does not belong to the certificate. Paste the key that was "
            "created with this certificate."
        )
    return certificate, key


def load_service_account(text: str) -> dict[str, str]:
    """A Google service-account key (the JSON file Google issues), checked, or
    InvalidCredential."""
    if len(text) > MAX_CREDENTIAL_CHARS:
        raise InvalidCredential(
            f"This is {len(text):,} characters long; a service-account key is a few thousand."
        )
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidCredential(
            "This is not a service-account key: paste the whole JSON file that Google Cloud "
            "console gives under IAM & Admin -> Service accounts -> Keys."
        ) from None
    if not isinstance(data, dict) or data.get("type") != "service_account":
        raise InvalidCredential(
            'This JSON is not a service-account key (its "type" is not "service_account"). '
            "Create a key for the service account and paste that JSON file."
        )
    missing = [
        name
        for name in ("client_email", "private_key", "private_key_id")
        if not isinstance(data.get(name), str) or not data.get(name)
    ]
    if missing:
        raise InvalidCredential(
            f"The service-account key lacks {', '.join(missing)}. Paste the whole JSON file."
        )
    try:
        serialization.load_pem_private_key(data["private_key"].encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise InvalidCredential(
            "The private key in this service-account key cannot be read. Paste the file "
            "exactly as downloaded."
        ) from None
    token_uri = data.get("token_uri") or GOOGLE_TOKEN_URI
    if not isinstance(token_uri, str) or not token_uri.startswith("https://"):
        raise InvalidCredential("The key's token_uri must be an https:// address.")
    return {**data, "token_uri": token_uri}


def describe_credential(kind: str, value: str) -> dict[str, Any]:
    """What may be shown of a credential (never the secret), or InvalidCredential."""
    if kind not in CREDENTIAL_KINDS:
        raise InvalidCredential(f"Unknown credential kind {kind!r}.")
    if not isinstance(value, str) or not value.strip():
        raise InvalidCredential("The credential is empty.")
    if kind == "certificate":
        certificate, _key = load_certificate_credential(value)
        info = describe(certificate)
        return {
            "kind": kind,
            "subject": info.subject,
            "not_after": info.not_after.isoformat(),
            "thumbprint": certificate.fingerprint(hashes.SHA1()).hex().upper(),
            "x5t": x5t(certificate),
            "sha256": colon_hex(certificate.fingerprint(hashes.SHA256())),
        }
    if kind == "service_account":
        account = load_service_account(value)
        return {
            "kind": kind,
            "client_email": account["client_email"],
            "private_key_id": account["private_key_id"],
            "token_uri": account["token_uri"],
        }
    if len(value) > MAX_CREDENTIAL_CHARS:
        raise InvalidCredential(f"This is {len(value):,} characters long; far too long.")
    return {"kind": kind}
