"""A real OAuth 2.0 token endpoint on loopback (HTTPS, trustme CA) and an aiosmtpd XOAUTH2
sign-in that accepts only live tokens from it.

It plays the three providers the product knows:
- Microsoft: POST /{tenant}/oauth2/v2.0/token, client credentials with a client secret in the
  body, or a client assertion (RS256 JWT) verified against the registered certificate's
  public key, whose header must name it by x5t (base64url SHA-1 thumbprint);
- Google: POST /google/token, the JWT bearer grant (RFC 7523) with an assertion verified
  against the service account's public key, checking aud, sub and the scope claim;
- other: POST /other/token, client credentials (HTTP Basic) and refresh_token with rotation.

It issues opaque tokens that live `lifetime` seconds, counts requests, can be made down,
slow or failing with 5xx, and answers with a chosen provider error on demand.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import trustme
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from tests.smtpservers import Recorder

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MICROSOFT_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_SCOPE = "https://mail.google.com/"

# What the real endpoints answer, for the errors the product explains.
MICROSOFT_ERRORS = {
    "AADSTS7000215": (401, "invalid_client", "Invalid client secret provided."),
    "AADSTS7000222": (401, "invalid_client", "The provided client secret keys are expired."),
    "AADSTS700016": (400, "unauthorized_client", "Application was not found in the directory."),
    "AADSTS90002": (400, "invalid_request", "Tenant not found."),
    "AADSTS700027": (401, "invalid_client", "Client assertion failed signature validation."),
}
GOOGLE_ERRORS = {
    "unauthorized_client": (
        401,
        "unauthorized_client",
        "Client is unauthorized to retrieve access tokens using this method, or client not "
        "authorized for any of the scopes requested.",
    ),
    "invalid_grant": (400, "invalid_grant", "Invalid email or User ID"),
}


def rsa_key_pem() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return key, pem


def app_certificate(ca: trustme.CA) -> tuple[x509.Certificate, str]:
    """A certificate credential as an administrator pastes it: certificate, then key."""
    leaf = ca.issue_cert("gateway-manager-app.example", key_type=trustme.KeyType.RSA)
    pem = leaf.cert_chain_pems[0].bytes().decode() + leaf.private_key_pem.bytes().decode()
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return certificate, pem


def thumbprint(certificate: x509.Certificate) -> str:
    digest = certificate.fingerprint(hashes.SHA1())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Issued:
    expires: float  # time.time()
    subject: str  # the mailbox (Google) or the client ID


@dataclass
class TokenEndpoint:
    """The provider's side. Every attribute may be changed by a test while it runs."""

    port: int = 0
    lifetime: int = 3600
    # Microsoft
    tenant: str = "contoso.onmicrosoft.com"
    client_id: str = "11111111-2222-3333-4444-555555555555"
    client_secret: str = field(default_factory=lambda: "ms~" + secrets.token_urlsafe(24))
    certificate: x509.Certificate | None = None
    secret_expired: bool = False
    # Google
    service_account: dict = field(default_factory=dict)
    google_public_key: rsa.RSAPublicKey | None = None
    google_users: set[str] = field(default_factory=set)
    google_delegated_scopes: set[str] = field(default_factory=lambda: {GOOGLE_SCOPE})
    # Other
    other_client_id: str = "gateway-manager"
    other_secret: str = field(default_factory=lambda: "other-" + secrets.token_urlsafe(24))
    refresh_tokens: set[str] = field(default_factory=set)
    rotate: bool = True
    # Behaviour on demand
    down: bool = False  # drop every connection without an answer
    delay: float = 0.0  # seconds before answering: a slow endpoint
    status_5xx: int = 0  # answer every request with this status
    fail_with: str = ""  # a key of MICROSOFT_ERRORS or GOOGLE_ERRORS
    # What it did
    requests: list[str] = field(default_factory=list)  # grant types, in order
    issued: dict[str, Issued] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    rotated: list[str] = field(default_factory=list)  # refresh tokens issued in rotation
    lock: threading.Lock = field(default_factory=threading.Lock)
    ca_file: Path | None = None

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def microsoft_url(self) -> str:
        return f"{self.base}/{self.tenant}/oauth2/v2.0/token"

    @property
    def google_url(self) -> str:
        return f"{self.base}/google/token"

    @property
    def other_url(self) -> str:
        return f"{self.base}/other/token"

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def tokens(self) -> list[str]:
        """Every access and refresh token it ever issued, to look for where none may be."""
        with self.lock:
            return [*self.issued, *self.refresh_tokens, *self.rotated]

    def live(self, token: str) -> Issued | None:
        with self.lock:
            issued = self.issued.get(token)
        if issued is None or token in self.revoked or time.time() >= issued.expires:
            return None
        return issued

    def revoke_all(self) -> None:
        with self.lock:
            self.revoked.update(self.issued)

    # -- the provider's decisions ------------------------------------------------------

    def answer(self, path: str, form: dict[str, str], basic: tuple[str, str] | None) -> tuple:
        """(status, JSON body) for one token request."""
        with self.lock:
            self.requests.append(form.get("grant_type", ""))
        if self.fail_with:
            status, error, text = {**MICROSOFT_ERRORS, **GOOGLE_ERRORS}[self.fail_with]
            prefix = f"{self.fail_with}: " if self.fail_with.startswith("AADSTS") else ""
            return status, {"error": error, "error_description": prefix + text}
        if path.endswith("/oauth2/v2.0/token"):
            return self._microsoft(path.split("/")[1], form)
        if path == "/google/token":
            return self._google(form)
        if path == "/other/token":
            return self._other(form, basic)
        return 404, {"error": "invalid_request", "error_description": "no such endpoint"}

    def _error(self, code: str, *, table=MICROSOFT_ERRORS) -> tuple:
        status, error, text = table[code]
        prefix = f"{code}: " if code.startswith("AADSTS") else ""
        return status, {"error": error, "error_description": prefix + text + " Trace ID: t"}

    def _issue(self, subject: str, scope: str, **extra) -> tuple:
        token = "at-" + secrets.token_urlsafe(32)
        with self.lock:
            self.issued[token] = Issued(time.time() + self.lifetime, subject)
        body = {"token_type": "Bearer", "expires_in": self.lifetime, "access_token": token}
        return 200, {**body, "scope": scope, **extra}

    def _microsoft(self, tenant: str, form: dict[str, str]) -> tuple:
        if tenant != self.tenant:
            return self._error("AADSTS90002")
        if form.get("client_id") != self.client_id:
            return self._error("AADSTS700016")
        if form.get("grant_type") != "client_credentials" or form.get("scope") != MICROSOFT_SCOPE:
            return 400, {"error": "invalid_scope", "error_description": "AADSTS70011: scope"}
        if "client_assertion" in form:
            if form.get("client_assertion_type") != ASSERTION_TYPE or not self._assertion_ok(
                form["client_assertion"]
            ):
                return self._error("AADSTS700027")
        elif form.get("client_secret") != self.client_secret:
            return self._error("AADSTS7000215")
        elif self.secret_expired:
            return self._error("AADSTS7000222")
        return self._issue(self.client_id, "")  # Microsoft states no scope for .default

    def _assertion_ok(self, assertion: str) -> bool:
        if self.certificate is None:
            return False
        key = RSAKey.import_key(
            self.certificate.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        try:
            token = jwt.decode(assertion, key, algorithms=["RS256"])
        except (JoseError, ValueError):
            return False
        claims, now = token.claims, time.time()
        return (
            token.header.get("x5t") == thumbprint(self.certificate)
            and claims.get("iss") == claims.get("sub") == self.client_id
            and claims.get("aud") == self.microsoft_url
            and bool(claims.get("jti"))
            and claims.get("exp", 0) > now
        )

    def _google(self, form: dict[str, str]) -> tuple:
        if form.get("grant_type") != JWT_BEARER or self.google_public_key is None:
            return 400, {"error": "unsupported_grant_type", "error_description": "grant"}
        pem = self.google_public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        try:
            token = jwt.decode(form.get("assertion", ""), RSAKey.import_key(pem), ["RS256"])
        except (JoseError, ValueError):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        claims, now = token.claims, time.time()
        if (
            claims.get("iss") != self.service_account["client_email"]
            or claims.get("aud") != self.google_url
            or token.header.get("kid") != self.service_account["private_key_id"]
        ):
            return 401, {"error": "invalid_client", "error_description": "client not found"}
        if not (now - 300 <= claims.get("iat", 0) <= now + 300) or claims.get("exp", 0) <= now:
            return 400, {
                "error": "invalid_grant",
                "error_description": "Invalid JWT: Token must be a short-lived token (60 "
                "minutes) and in a reasonable timeframe. Check your iat and exp values.",
            }
        if claims.get("sub") not in self.google_users:
            return self._error("invalid_grant", table=GOOGLE_ERRORS)
        if claims.get("scope") not in self.google_delegated_scopes:
            return self._error("unauthorized_client", table=GOOGLE_ERRORS)
        return self._issue(claims["sub"], claims["scope"])

    def _other(self, form: dict[str, str], basic: tuple[str, str] | None) -> tuple:
        grant = form.get("grant_type")
        if grant == "client_credentials":
            if basic != (self.other_client_id, self.other_secret):
                return 401, {"error": "invalid_client", "error_description": "bad client"}
            return self._issue(self.other_client_id, form.get("scope", ""))
        if grant == "refresh_token":
            old = form.get("refresh_token", "")
            with self.lock:
                known = old in self.refresh_tokens
                if known and self.rotate:
                    self.refresh_tokens.discard(old)
                    new = "rt-" + secrets.token_urlsafe(32)
                    self.refresh_tokens.add(new)
                    self.rotated.append(new)
            if not known or form.get("client_id") != self.other_client_id:
                return 400, {"error": "invalid_grant", "error_description": "revoked or unknown"}
            extra = {"refresh_token": new} if self.rotate else {}
            return self._issue(self.other_client_id, form.get("scope", ""), **extra)
        return 400, {"error": "unsupported_grant_type", "error_description": str(grant)}


class _Handler(BaseHTTPRequestHandler):
    endpoint: TokenEndpoint  # set on the subclass per server

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        endpoint = self.endpoint
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        if endpoint.down:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if endpoint.delay:
            time.sleep(endpoint.delay)
        if endpoint.status_5xx:
            with endpoint.lock:
                endpoint.requests.append("5xx")
            self._send(endpoint.status_5xx, b"<html>Service Unavailable</html>", "text/html")
            return
        form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        basic = None
        header = self.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            basic = (user, password)
        status, answer = endpoint.answer(self.path, form, basic)
        self._send(status, json.dumps(answer).encode(), "application/json")

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class token_endpoint:
    """Run a TokenEndpoint on 127.0.0.1 over HTTPS with a certificate from `ca`."""

    def __init__(self, ca: trustme.CA, endpoint: TokenEndpoint | None = None) -> None:
        self.ca = ca
        self.endpoint = endpoint or TokenEndpoint()

    def __enter__(self) -> TokenEndpoint:
        handler = type("Handler", (_Handler,), {"endpoint": self.endpoint})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.endpoint.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self.endpoint

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def service_account(endpoint: TokenEndpoint, *, users=("alerts@example.com",)) -> str:
    """Register a Google service account with the endpoint; returns the key file's text."""
    key, pem = rsa_key_pem()
    account = {
        "type": "service_account",
        "project_id": "gateway-manager-test",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": "mailer@gateway-manager-test.iam.gserviceaccount.com",
        "client_id": "109876543210987654321",
        "token_uri": endpoint.google_url,
    }
    endpoint.service_account = account
    endpoint.google_public_key = key.public_key()
    endpoint.google_users = set(users)
    return json.dumps(account)


# -- the SMTP side ----------------------------------------------------------------------------


@dataclass
class XOAuth2Recorder(Recorder):
    """An aiosmtpd handler that offers AUTH XOAUTH2 and accepts only live tokens issued by
    `endpoint` for the mailbox it signs in as."""

    endpoint: TokenEndpoint | None = None
    style: str = "microsoft"  # how a refusal looks: Microsoft's 535 or Google's 334 + 535
    refuse_with: str = ""  # e.g. "535 5.7.139 ..." for any token: the tenant's settings
    xoauth2: list[tuple[str, bool]] = field(default_factory=list)  # (mailbox, accepted)
    hold_at: int = 0  # before accepting this message, wait until every token issued expired

    async def handle_DATA(self, server, session, envelope):
        if self.hold_at and len(self.messages) + 1 == self.hold_at and self.endpoint:
            with self.endpoint.lock:
                last = max((i.expires for i in self.endpoint.issued.values()), default=0)
            await asyncio.sleep(max(0.0, last - time.time()) + 0.05)
        return await super().handle_DATA(server, session, envelope)

    async def auth_XOAUTH2(self, server, args):
        if len(args) > 1:
            raw = args[1].encode()
        else:
            raw = await server.challenge_auth("", encode_to_b64=False)
        try:
            fields = dict(
                part.split("=", 1)
                for part in base64.b64decode(raw).decode().split("\x01")
                if "=" in part
            )
        except (ValueError, UnicodeError):
            return AuthResult(
                success=False, handled=False, message="501 5.5.2 Cannot decode response"
            )
        mailbox = fields.get("user", "")
        token = fields.get("auth", "").removeprefix("Bearer ")
        issued = self.endpoint.live(token) if self.endpoint else None
        accepted = issued is not None and not self.refuse_with
        apps = (self.endpoint.client_id, self.endpoint.other_client_id) if self.endpoint else ()
        if issued is not None and issued.subject != mailbox and issued.subject not in apps:
            accepted = False  # Google's token is for one mailbox; an app's for any
        with self.lock:
            self.xoauth2.append((mailbox, accepted))
        if accepted:
            self.logins.append(f"XOAUTH2 {mailbox}")
            return AuthResult(success=True)
        if self.refuse_with:
            return AuthResult(success=False, handled=False, message=self.refuse_with)
        if self.style == "google":
            status = base64.b64encode(
                json.dumps({"status": "400", "schemes": "Bearer", "scope": GOOGLE_SCOPE}).encode()
            )
            await server.challenge_auth(status, encode_to_b64=False)
            return AuthResult(
                success=False,
                handled=False,
                message="535 5.7.8 Username and Password not accepted.",
            )
        return AuthResult(
            success=False, handled=False, message="535 5.7.3 Authentication unsuccessful"
        )


def ca_bundle(tmp_path: Path, ca: trustme.CA) -> Path:
    """A CA file for SSL_CERT_FILE: the test CA only, as a replaced trust store."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "oauth-ca.pem"
    path.write_bytes(ca.cert_pem.bytes())
    return path
