"""What the SMTP settings will do, decided without touching a socket.

`plan(config)` implements the encryption rules of the design (the help page's "With
automatic, STARTTLS is always used unless the host is localhost or port 25. With port 465,
it switches to SMTPS", made exact: on port 25 and to loopback, STARTTLS is used when the server
offers it, without requiring a valid certificate, like Postfix's `may` level).
The transport only carries a plan out, and the settings page reads the same plan aloud, so
what the page says is what the transport does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509

from .certificates import CertificateInfo, describe, exact_certificates
from .hostnames import display_host_port, is_loopback
from .options import Fingerprint, SmtpOptions
from .providers import describe_sign_in

SMTPS_PORT = 465
PLAIN_PORT = 25


class Encryption(enum.StrEnum):
    AUTOMATIC = "auto"
    FORCE_SMTPS = "smtps"


class Security(enum.StrEnum):
    SMTPS = "smtps"  # TLS from the first byte
    STARTTLS = "starttls"  # plain greeting, then STARTTLS; the send fails if it is not offered
    # STARTTLS when the server offers it, the certificate not verified; plain when not offered.
    OPPORTUNISTIC = "opportunistic"
    PLAIN = "plain"  # no encryption at all


# Verified TLS (SMTPS, required STARTTLS) checks the server; opportunistic TLS only hides the
# mail from passive eavesdroppers.
VERIFIED = frozenset({Security.SMTPS, Security.STARTTLS})


@dataclass(frozen=True)
class SmtpConfig:
    """The connection-relevant part of the settings. The password is deliberately absent."""

    host: str
    port: int
    encryption: Encryption = Encryption.AUTOMATIC
    username: str = ""
    options: SmtpOptions = field(default_factory=SmtpOptions)
    trusted_certificate: str = ""
    client_certificate: str = ""  # PEM, public; its key is revealed only for the transport
    auth: str = "password"  # "none", "password" (a blank user signs in to nothing) or "oauth2"
    oauth_provider: str = ""
    oauth_tenant: str = ""


@dataclass(frozen=True)
class ConnectionPlan:
    host: str
    port: int
    security: Security
    reason: str  # why this security, in words: "port 465"
    verify_peer: bool
    trusted_certificate: str  # PEM, trusted for this server on top of the system CAs
    peer_fingerprint: Fingerprint | None
    username: str  # blank: no authentication
    options: SmtpOptions
    refusal: str | None  # set when sending must stop before AUTH, with the fix
    # The TLS client certificate (PEM, then any intermediates), presented when asked for.
    client_certificate: str = ""
    auth: str = "password"
    oauth_provider: str = ""
    oauth_tenant: str = ""

    @property
    def encrypted(self) -> bool:
        """TLS is (or, opportunistically, may be) used: a TLS context is needed."""
        return self.security is not Security.PLAIN

    @property
    def verified(self) -> bool:
        """TLS is required and the server checked (unless verify_peer is off)."""
        return self.security in VERIFIED

    @property
    def unused_trust(self) -> list[str]:
        """The trusted certificate and pin, when this connection never checks them."""
        if self.verified:
            return []
        unused = ["the trusted certificate"] if self.trusted_certificate else []
        return unused + (["peer_fingerprint"] if self.peer_fingerprint else [])

    @property
    def authenticates(self) -> bool:
        return self.auth != "none" and bool(self.username)

    @property
    def uses_oauth(self) -> bool:
        return self.authenticates and self.auth == "oauth2"

    @property
    def weak_pin(self) -> bool:
        """MD5 and SHA-1 pins are accepted, as the help page's peers do, but can be forged."""
        return self.peer_fingerprint is not None and self.peer_fingerprint.algorithm != "sha256"

    def describe(self, *, password_missing: bool = False) -> str:
        """One sentence an administrator can check against what they meant."""
        where = display_host_port(self.host, self.port)
        if self.security is Security.SMTPS:
            parts = [f"Connects to {where} with TLS from the first byte (SMTPS: {self.reason})"]
        elif self.security is Security.STARTTLS:
            why = "" if self.reason == REQUIRED_ELSEWHERE else f": {self.reason}"
            parts = [f"Connects to {where}, upgrades with STARTTLS (required{why})"]
        elif self.security is Security.OPPORTUNISTIC:
            parts = [
                f"Connects to {where}, upgrades with STARTTLS when the server offers it, "
                f"without verifying the server certificate, else sends without encryption "
                f"(opportunistic TLS: {self.reason})"
            ]
        else:
            parts = [f"Connects to {where} without encryption ({self.reason})"]
        if self.verified:
            parts.append(self._describe_verification())
        if self.unused_trust:
            parts.append(
                f"does not use {' or '.join(self.unused_trust)}, which only verified TLS checks"
            )
        if self.client_certificate:
            parts.append(self._describe_client_certificate())
        if not self.authenticates:
            parts.append("does not sign in")
        elif self.refusal:
            without = "encryption" if self.security is Security.PLAIN else "verified TLS"
            parts.append(f"but will not sign in as {self.username} without {without}")
        elif self.uses_oauth:
            how = describe_sign_in(self.oauth_provider, self.oauth_tenant)
            parts.append(f"signs in as {self.username} {how}")
        elif password_missing:
            parts.append(f"signs in as {self.username}, but no password is stored")
        else:
            parts.append(f"signs in as {self.username}")
        return ", ".join(parts) + "."

    @cached_property
    def client_certificate_info(self) -> CertificateInfo | None:
        """The client certificate itself (the first in the PEM); None if there is none."""
        try:
            return describe(x509.load_pem_x509_certificate(self.client_certificate.encode()))
        except ValueError:
            return None

    def _describe_client_certificate(self) -> str:
        info = self.client_certificate_info
        name = info.subject if info else "(unreadable)"
        if not self.encrypted:
            return f"cannot present the client certificate {name} without TLS"
        text = f"presents the client certificate {name} when the server asks for one"
        if self.security is Security.OPPORTUNISTIC:
            text += " (only if STARTTLS is offered)"
        if info and info.expired():
            text += f" (it expired on {info.not_after:%Y-%m-%d})"
        return text

    @property
    def trusts_exactly(self) -> bool:
        """The trusted certificate is the server's own (no CA): only it is accepted."""
        return bool(exact_certificates(self.trusted_certificate))

    @property
    def trusts_a_ca(self) -> bool:
        return bool(self.trusted_certificate) and not self.trusts_exactly

    def _describe_verification(self) -> str:
        if self.verify_peer and self.trusts_exactly:
            text = "accepts only the stored trusted certificate"
        elif self.verify_peer:
            text = "verifies the server certificate"
            if self.trusted_certificate:
                text += " against the system's CAs and the stored trusted certificate"
        else:
            text = "does not verify the server certificate (verify_peer is off)"
        if self.peer_fingerprint:
            text += f", requires the certificate fingerprint {self.peer_fingerprint}"
            if self.weak_pin:
                text += f" ({self.peer_fingerprint.algorithm.upper()} is weak: pin SHA-256)"
        return text


REQUIRED_ELSEWHERE = "STARTTLS is required on every other port"


def choose_security(config: SmtpConfig) -> tuple[Security, str]:
    """The design's rules table plus the auto_tls and require_tls options."""
    options = config.options
    if config.encryption == Encryption.FORCE_SMTPS:
        return Security.SMTPS, "Force SMTPS is selected"
    if config.port == SMTPS_PORT:
        return Security.SMTPS, "port 465"
    if options.require_tls:
        return Security.STARTTLS, "require_tls is on"
    if not options.auto_tls:
        return Security.PLAIN, "auto_tls is off"
    if config.port != PLAIN_PORT and not is_loopback(config.host):
        return Security.STARTTLS, REQUIRED_ELSEWHERE
    # Port 25 and loopback: opportunistic, unless the administrator said how to verify this
    # server. A pin or a trusted certificate that an unverified connection would silently
    # skip makes TLS required instead, like Postfix's "fingerprint" level.
    if options.peer_fingerprint:
        return Security.STARTTLS, "peer_fingerprint is set"
    if config.trusted_certificate.strip():
        return Security.STARTTLS, "a trusted certificate is stored"
    if config.port == PLAIN_PORT:
        return Security.OPPORTUNISTIC, "port 25"
    return Security.OPPORTUNISTIC, "the server is this machine"


def plan(config: SmtpConfig) -> ConnectionPlan:
    security, reason = choose_security(config)
    refusal = None
    signs_in = config.auth != "none" and bool(config.username)
    if signs_in and security not in VERIFIED and not is_loopback(config.host):
        secret = "token" if config.auth == "oauth2" else "password"
        if security is Security.PLAIN:
            fix = "remove auto_tls: false, " if reason == "auto_tls is off" else ""
            how = "unencrypted"
        else:  # opportunistic TLS is not verified: anyone in the path could pose as the server
            fix = '{"require_tls": true}, '
            how = "unencrypted or to a server that is not verified"
        refusal = (
            f"The {secret} would cross the network {how} to {config.host}, so sending "
            f"stops before signing in. Use {fix}port 587 (STARTTLS), port 465 or Force SMTPS."
        )
    return ConnectionPlan(
        host=config.host,
        port=config.port,
        security=security,
        reason=reason,
        verify_peer=config.options.verify_peer,
        trusted_certificate=config.trusted_certificate,
        peer_fingerprint=config.options.peer_fingerprint,
        username=config.username,
        options=config.options,
        refusal=refusal,
        client_certificate=config.client_certificate,
        auth=config.auth,
        oauth_provider=config.oauth_provider,
        oauth_tenant=config.oauth_tenant,
    )
