"""TLS for the SMTP connection: the context a plan asks for, and the fingerprint pin."""

from __future__ import annotations

import hashlib
import hmac
import ssl

from .certificates import exact_certificates
from .plan import ConnectionPlan


def build_context(plan: ConnectionPlan, *, verify: bool | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later; the system CAs plus a trusted CA, unless verify_peer is off.
    `verify=False` makes a context that only looks (for diagnostics).

    A trusted bundle of server certificates (no CA among them) is not a trust anchor: the
    handshake only looks, and the transport accepts exactly those certificates (see
    `exact_certificates`), so a trusted certificate can never vouch for another one."""
    verify = plan.verify_peer if verify is None else verify
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify or exact_certificates(plan.trusted_certificate):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if plan.trusted_certificate:
        context.load_verify_locations(cadata=plan.trusted_certificate)
        # A pasted intermediate CA ends the chain too; a CA vouches for what it signs.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def fingerprint_matches(der: bytes, algorithm: str, hexdigest: str) -> bool:
    actual = hashlib.new(algorithm, der).hexdigest()
    return hmac.compare_digest(actual, hexdigest)
