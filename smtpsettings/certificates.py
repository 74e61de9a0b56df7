"""PEM certificates: parsing the trusted certificate and describing any certificate."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gatewaymgr.untrusted import printable_record

MAX_PEM_CHARS = 256_000
_BEGIN = "-----BEGIN CERTIFICATE-----"


class InvalidCertificate(ValueError):
    """The text is not one or more PEM certificates; the message says what it is instead."""


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    sha256: str  # colon-separated upper-case hex, as browsers and openssl show it
    names: tuple[str, ...] = ()  # DNS names and IP addresses it is valid for
    is_ca: bool = False  # CA:TRUE: it can vouch for any certificate it signs

    @property
    def self_signed(self) -> bool:
        return self.subject == self.issuer

    def expired(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return now > self.not_after

    def not_yet_valid(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return now < self.not_before


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{byte:02X}" for byte in digest)


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName)) + tuple(
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    )


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def describe(certificate: x509.Certificate) -> CertificateInfo:
    info = CertificateInfo(
        subject=certificate.subject.rfc4514_string() or "(empty subject)",
        issuer=certificate.issuer.rfc4514_string() or "(empty issuer)",
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        sha256=colon_hex(certificate.fingerprint(hashes.SHA256())),
        names=_names(certificate),
        is_ca=_is_ca(certificate),
    )
    # Whoever made the certificate chose its subject, issuer and names: made printable here,
    # so no page, command or history entry shows a terminal escape sequence from it.
    return printable_record(info)


def describe_der(der: bytes) -> CertificateInfo:
    return describe(x509.load_der_x509_certificate(der))


def der_to_pem(der: bytes) -> str:
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return pem.decode("ascii")


def parse_pem_bundle(text: str) -> list[CertificateInfo]:
    """Describe every certificate in `text`, or say clearly why it is not a PEM bundle."""
    if len(text) > MAX_PEM_CHARS:
        raise InvalidCertificate(
            f"This is {len(text):,} characters long; a certificate bundle is at most "
            f"{MAX_PEM_CHARS:,}. Paste only the server's certificate or its CA."
        )
    if "PRIVATE KEY-----" in text:
        raise InvalidCertificate(
            "This contains a private key. Paste only the certificate (the block starting "
            "with -----BEGIN CERTIFICATE-----) and keep the key secret."
        )
    if _BEGIN not in text:
        raise InvalidCertificate(
            "This is not a PEM certificate: paste the text from -----BEGIN CERTIFICATE----- "
            "to -----END CERTIFICATE-----, for example the output of "
            "openssl s_client -showcerts."
        )
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8"))
    except ValueError as error:
        raise InvalidCertificate(
            f"The certificate cannot be read ({error}). Paste it again in full, from "
            "-----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----."
        ) from None
    return [describe(certificate) for certificate in certificates]


def normalize_pem(text: str) -> str:
    """Line endings and surrounding blank space normalised, content untouched."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    return text + "\n" if text else ""


def exact_certificates(pem: str) -> frozenset[bytes]:
    """The server certificates a trusted bundle names, as DER, when it holds no CA: then only
    exactly these are accepted. Empty for a bundle with a CA, which is trusted as an anchor."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("utf-8"))
    except ValueError:  # blank or unreadable: the form says so; nothing is trusted exactly
        return frozenset()
    if any(_is_ca(certificate) for certificate in certificates):
        return frozenset()
    return frozenset(c.public_bytes(serialization.Encoding.DER) for c in certificates)
