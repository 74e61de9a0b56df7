"""OAuth 2.0 access tokens for SMTP AUTH XOAUTH2: which endpoint, which credential, and what
may be shown of it.

The grant requests and the JWT signing are Authlib's (its httpx OAuth client); this module
only decides what to ask for and translates what the provider answered into advice.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AssertionClient, OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from joserfc.jwk import RSAKey

from .certificates import colon_hex, describe
from .problems import SmtpProblem, policy_problem, token_problem, token_unreachable

MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"

CREDENTIAL_KINDS = ("client_secret", "certificate", "service_account", "refresh_token")
MAX_CREDENTIAL_CHARS = 64_000
_KEY_BLOCK = re.compile(r"-----BEGIN ((?:RSA |EC )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL)


RSA_ONLY = (
    "This certificate has an EC key; Microsoft signs apps in only with RSA certificates. "
    "Create one with, for example: openssl req -x509 -newkey rsa:2048 -nodes -days 730 "
    '-subj "/CN=Gateway Manager" -keyout key.pem -out cert.pem'
)


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


def missing_settings(record: Any) -> str:
    """What an OAuth 2.0 sign-in still lacks before any token can be asked for ("" if
    nothing): the page and the command validate too; this guards stored settings."""
    provider = record.oauth_provider
    if provider not in ("microsoft", "google", "other"):
        return "Choose the OAuth 2.0 provider: Microsoft 365, Google Workspace or Other."
    if provider == "microsoft" and not (record.oauth_tenant or "").strip():
        return "Enter the Microsoft 365 tenant: its Directory (tenant) ID or a verified domain."
    if provider in ("microsoft", "other") and not (record.oauth_client_id or "").strip():
        return "Enter the client ID of the app registered with the provider."
    if provider == "other" and not (record.oauth_token_url or "").strip():
        return "Enter the provider's token URL (https://...)."
    return ""


def resolved_endpoint(record: Any, credential: dict[str, str]) -> str:
    """Where this credential's tokens come from: a service-account key names its own."""
    if credential.get("kind") == "service_account":
        try:
            return load_service_account(credential.get("value", ""))["token_uri"]
        except InvalidCredential:
            pass  # request_token() says what is wrong with it
    return token_endpoint(record)


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
        certificate, key = load_certificate_credential(value)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidCredential(RSA_ONLY)  # said at the field, not at the first send
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


# -- token requests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    """What a token endpoint issued. The secrets never appear in a repr."""

    access_token: str = field(repr=False)
    lifetime: int  # seconds, as the provider said (3600 when it did not)
    scope: str
    refresh_token: str = field(default="", repr=False)  # a rotated refresh token, if any


@dataclass
class Exchange:
    """The HTTP side of one token request, for the Token step: never the token."""

    endpoint: str
    status: int | None = None
    seconds: float = 0.0


def _tls_context() -> ssl.SSLContext:
    # The system trust store; OpenSSL reads SSL_CERT_FILE / SSL_CERT_DIR when they are set,
    # which is how a private CA (or a test's CA) is trusted. Not certifi's bundle.
    return ssl.create_default_context()


def check_endpoint(endpoint: str) -> None:
    """Credentials go only to an https:// token endpoint with a host."""
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        raise policy_problem(
            "token",
            f"The token URL {endpoint or '(empty)'} is not an https:// address, and credentials "
            "never travel unencrypted. Enter the provider's https:// token endpoint.",
            kind="token-url",
        )


def request_token(
    record: Any, credential: dict[str, str], exchange: Exchange, *, timeout: float
) -> IssuedToken:
    """Ask the provider for an access token with the revealed `credential`. Fills in
    `exchange`; raises SmtpProblem (step "token") with the provider's answer explained."""
    endpoint = exchange.endpoint
    check_endpoint(endpoint)
    kind, value = credential.get("kind", ""), credential.get("value", "")
    if not value:
        raise policy_problem(
            "token",
            "No OAuth 2.0 credential is stored for these settings: enter the client secret, "
            "certificate, service-account key or refresh token on Settings -> SMTP.",
            kind="credential-missing",
        )

    def seen(response: httpx.Response) -> None:
        exchange.status = response.status_code

    http = {
        "timeout": timeout,
        "verify": _tls_context(),
        "trust_env": False,  # no proxy or .netrc from the environment sees the credential
        "event_hooks": {"response": [seen]},
    }
    started = time.perf_counter()
    try:
        token = _grant(record, kind, value, endpoint, http)
    except OAuthError as error:
        raise token_problem(
            endpoint,
            exchange.status or 0,
            error.error or "",
            error.description or "",
            provider=record.oauth_provider,
        ) from None
    except httpx.TimeoutException:
        raise token_unreachable(
            endpoint, f"no answer within {timeout:g} seconds", kind="token-timeout"
        ) from None
    except httpx.HTTPStatusError as error:
        raise _status_problem(endpoint, error.response.status_code) from None
    except httpx.TransportError as error:
        raise _transport_problem(endpoint, error) from None
    except InvalidCredential as error:
        raise policy_problem("token", str(error), kind="credential-invalid") from None
    except ValueError as error:  # a 2xx answer that is no token response
        raise token_unreachable(endpoint, f"not a token response ({error})") from None
    finally:
        exchange.seconds = time.perf_counter() - started
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise token_unreachable(endpoint, "the answer holds no access_token")
    try:
        lifetime = int(token.get("expires_in") or 3600)
    except (TypeError, ValueError):
        lifetime = 3600
    rotated = token.get("refresh_token") if kind == "refresh_token" else ""
    return IssuedToken(
        access_token=access,
        lifetime=max(lifetime, 1),
        scope=str(token.get("scope") or token_scope(record)),
        refresh_token=rotated if isinstance(rotated, str) and rotated != value else "",
    )


def _grant(record: Any, kind: str, value: str, endpoint: str, http: dict) -> dict:
    """One grant request through Authlib, chosen by provider and credential kind."""
    scope = token_scope(record)
    client_id = (record.oauth_client_id or "").strip()
    if kind == "service_account":
        account = load_service_account(value)
        # RFC 7523 JWT bearer grant: iss = the service account, sub = the mailbox it acts
        # for (domain-wide delegation); Google reads the scope from the assertion.
        with AssertionClient(
            token_endpoint=endpoint,
            issuer=account["client_email"],
            subject=record.username,
            audience=endpoint,
            claims={"scope": scope},
            key=RSAKey.import_key(account["private_key"]),
            header={"alg": "RS256", "kid": account["private_key_id"]},
            **http,
        ) as client:
            return dict(client.refresh_token())
    if kind == "certificate":
        certificate, key = load_certificate_credential(value)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidCredential(RSA_ONLY)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        # Microsoft's certificate credential: a client assertion signed with the key, its
        # header naming the certificate by its SHA-1 thumbprint (x5t).
        signer = PrivateKeyJWT(endpoint, headers={"x5t": x5t(certificate)}, alg="RS256")
        with OAuth2Client(
            client_id, key_pem, token_endpoint_auth_method=signer, scope=scope, **http
        ) as client:
            # Microsoft wants client_id in the body beside the assertion.
            token = client.fetch_token(
                endpoint, grant_type="client_credentials", client_id=client_id
            )
            return dict(token)
    if kind == "client_secret":
        # Microsoft documents the secret in the form body; RFC 6749 servers must accept Basic.
        method = "client_secret_post" if record.oauth_provider == "microsoft" else None
        with OAuth2Client(
            client_id, value, token_endpoint_auth_method=method, scope=scope, **http
        ) as client:
            return dict(client.fetch_token(endpoint, grant_type="client_credentials"))
    if kind == "refresh_token":
        with OAuth2Client(
            client_id, None, token_endpoint_auth_method="none", scope=scope or None, **http
        ) as client:
            return dict(client.refresh_token(endpoint, refresh_token=value))
    raise InvalidCredential(f"Unknown credential kind {kind!r}.")


def _status_problem(endpoint: str, status: int) -> SmtpProblem:
    if status >= 500 or status == 429:
        return token_unreachable(
            endpoint, f"HTTP {status}", kind="token-unavailable"
        )  # the provider's trouble: retried
    return SmtpProblem(
        "token",
        f"The token endpoint {endpoint} answered HTTP {status} without an OAuth 2.0 answer. "
        "Check Token URL (or Tenant for Microsoft 365).",
        kind="token-http",
        reply=(status, f"HTTP {status}"),
        temporary=False,
    )


def _transport_problem(endpoint: str, error: httpx.TransportError) -> SmtpProblem:
    cause = error.__context__ or error.__cause__
    while cause is not None and not isinstance(cause, ssl.SSLError | OSError):
        cause = cause.__context__ or cause.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return SmtpProblem(
            "token",
            f"The certificate of the token endpoint {endpoint} is not trusted "
            f"({cause.verify_message}). Token endpoints are verified against the system's "
            "trust store: add an internal CA there, or point SSL_CERT_FILE at a bundle that "
            "holds it.",
            kind="token-untrusted",
            reply=(0, cause.verify_message or str(cause)),
            temporary=True,
        )
    reason = str(error) or type(error).__name__
    return token_unreachable(endpoint, reason)
