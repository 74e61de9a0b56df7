"""TLS for the SMTP connection: the context a plan asks for, the fingerprint pin, and the
client certificate."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import tempfile

from cryptography.hazmat.primitives import serialization

from .certificates import CertificateInfo, exact_certificates
from .plan import ConnectionPlan, Security
from .problems import client_certificate_unusable


class HandshakeWatch:
    """What OpenSSL reports of the latest handshake made with one context (a transport makes
    one connection at a time): whether the server asked for a client certificate. Known even
    when the handshake then fails."""

    def __init__(self) -> None:
        self.asked_for_certificate = False

    def __call__(self, connection, direction, version, content_type, message_type, data) -> None:
        if content_type != ssl._TLSContentType.HANDSHAKE:
            return
        if direction == "write" and message_type == ssl._TLSMessageType.CLIENT_HELLO:
            self.asked_for_certificate = False  # a new handshake
        elif direction == "read" and message_type == ssl._TLSMessageType.CERTIFICATE_REQUEST:
            self.asked_for_certificate = True


def build_context(
    plan: ConnectionPlan, *, verify: bool | None = None, client_key: str = ""
) -> ssl.SSLContext:
    """TLS 1.2 or later; the system CAs plus a trusted CA, unless verify_peer is off.
    `verify=False` makes a context that only looks (for diagnostics). With `client_key`, the
    plan's client certificate is presented when the server asks for one.

    A trusted bundle of server certificates (no CA among them) is not a trust anchor: the
    handshake only looks, and the transport accepts exactly those certificates (see
    `exact_certificates`), so a trusted certificate can never vouch for another one."""
    if verify is None:
        # Opportunistic TLS takes whatever certificate the server has, as Postfix's "may"
        # does: checking it would only push such a server back to plain text.
        verify = plan.verify_peer and plan.security is not Security.OPPORTUNISTIC
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if plan.client_certificate and client_key:
        load_client_certificate(context, plan.client_certificate, client_key)
    # OpenSSL tells this callback (a debugging hook, the only way Python offers) of each
    # handshake message: a CertificateRequest is the server asking for a client certificate.
    context._msg_callback = HandshakeWatch()
    if not verify or exact_certificates(plan.trusted_certificate):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if plan.trusted_certificate:
        context.load_verify_locations(cadata=plan.trusted_certificate)
        # A pasted intermediate CA ends the chain too; a CA vouches for what it signs.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def load_client_certificate(context: ssl.SSLContext, certificate_pem: str, key_pem: str) -> None:
    """Make `context` present the certificate, signing with the key.

    OpenSSL reads them only from a file. The file is private (0600), lives only for the
    moment of loading, and holds the key encrypted with a passphrase that exists only in this
    process's memory: the key never reaches the disk readable."""
    passphrase = secrets.token_bytes(32)
    try:
        # Checked when it was uploaded, and OpenSSL checks that it fits the certificate below:
        # RSA's consistency check would cost ~30 ms per connection for nothing.
        key = serialization.load_pem_private_key(
            key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
        sealed = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
        descriptor, path = tempfile.mkstemp(prefix="client-certificate-", suffix=".pem")
        try:
            with os.fdopen(descriptor, "wb") as file:  # mkstemp makes it 0600
                file.write(certificate_pem.encode() + b"\n" + sealed)
            context.load_cert_chain(path, password=passphrase)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    except (ValueError, TypeError, ssl.SSLError) as error:
        # A key that does not fit the certificate (they were stored apart) or is unreadable.
        raise client_certificate_unusable(certificate_pem, error) from None


def handshake_asked_for_certificate(context: ssl.SSLContext | None) -> bool:
    """Did the server ask for a client certificate in the latest handshake with `context`?"""
    watch = getattr(context, "_msg_callback", None)
    return isinstance(watch, HandshakeWatch) and watch.asked_for_certificate


def asked_for_certificate(sock: ssl.SSLSocket) -> bool:
    """Did the server ask for a client certificate in this connection's handshake?"""
    return handshake_asked_for_certificate(sock.context)


def client_certificate_note(sock: ssl.SSLSocket, info: CertificateInfo | None) -> str:
    """What the TLS step says about the client certificate, for the transcript."""
    if info is None:
        return ""
    if asked_for_certificate(sock):
        return f"; presented client certificate {info.subject} (SHA-256 {info.sha256})"
    return f"; the server did not ask for a client certificate, so {info.subject} was not presented"


def fingerprint_matches(der: bytes, algorithm: str, hexdigest: str) -> bool:
    actual = hashlib.new(algorithm, der).hexdigest()
    return hmac.compare_digest(actual, hexdigest)


def answers_tls(address: tuple, host: str, timeout: float, source_ip: str | None) -> bool:
    """Does `address` answer a TLS handshake (SMTPS)? Over a connection of its own, which
    sends nothing but a ClientHello; any TLS answer counts, even an alert."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    source = (source_ip, 0) if source_ip else None
    try:
        with (
            socket.create_connection(address[:2], timeout, source_address=source) as sock,
            context.wrap_socket(sock, server_hostname=host),
        ):
            return True
    except ssl.SSLError as error:
        return "ALERT" in (getattr(error, "reason", None) or "")
    except OSError:
        return False
