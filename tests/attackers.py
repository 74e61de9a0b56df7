"""Certificates an attacker's SMTP server presents: a stranger's leaf, or a CA of its own."""

from __future__ import annotations

import datetime
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.smtpservers import TEST_HOST, Certificates


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool,
    names: tuple[str, ...] = (TEST_HOST,),
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _serving(certificate_pem: str, key_pem: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as file:
        file.write(certificate_pem + key_pem)
        file.flush()
        context.load_cert_chain(file.name)
    return context


def ca_as_server() -> tuple[Certificates, Certificates]:
    """A server presenting a self-signed CA certificate (CA:TRUE) for TEST_HOST, and a second
    server presenting another leaf for TEST_HOST that this CA signed.

    Trusting the first must not make the second valid."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("Mallory's CA", ca_key, ca=True)
    ca_pem = _pem(ca_cert)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(TEST_HOST, leaf_key, issuer=("Mallory's CA", ca_key), ca=False)
    leaf_pem = _pem(leaf)
    return (
        Certificates(None, _serving(ca_pem, _key_pem(ca_key)), ca_pem, ca_pem),
        Certificates(None, _serving(leaf_pem, _key_pem(leaf_key)), leaf_pem, ca_pem),
    )
