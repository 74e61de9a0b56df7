"""PEM certificates: parsing the trusted certificate and the client certificate with its key,
and describing any certificate."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

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


# -- TLS client certificates --------------------------------------------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
# Key types TLS can sign a handshake with.
_TLS_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey)


class ClientCertificate(NamedTuple):
    """A TLS client certificate with its private key, as `parse_client_certificate` read it."""

    certificate_pem: str  # the certificate first, then any intermediates it came with: public
    key_pem: str  # PKCS#8, unencrypted: seal it at once, never show or log it
    info: CertificateInfo  # of the certificate itself

    def __repr__(self) -> str:  # a traceback or log line never carries the key
        return f"ClientCertificate({self.info.subject!r}, SHA-256 {self.info.sha256})"

    @property
    def warnings(self) -> tuple[str, ...]:
        """What to tell the administrator although the certificate is accepted."""
        info, found = self.info, []
        if info.expired():
            found.append(
                f"The client certificate {info.subject} expired on {info.not_after:%Y-%m-%d}: "
                "servers that check it will refuse it. Ask its issuer for a new one."
            )
        elif info.not_yet_valid():
            found.append(
                f"The client certificate {info.subject} is valid only from "
                f"{info.not_before:%Y-%m-%d}: until then servers that check it will refuse it."
            )
        if not _for_client_authentication(
            x509.load_pem_x509_certificate(self.certificate_pem.encode())
        ):
            found.append(
                f"The certificate {info.subject} is not meant for TLS client authentication "
                "(its extended key usage lacks clientAuth): most servers will refuse it."
            )
        return tuple(found)


def _for_client_authentication(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no restriction
    return bool(
        {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(usages)
    )


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def parse_client_certificate(text: str | bytes) -> ClientCertificate:
    """Read a pasted or uploaded PEM that holds a client certificate and its private key.

    Raises InvalidCertificate with what is wrong and what to do: no key, no certificate, a key
    that belongs to another certificate, a key protected by a passphrase. An expired
    certificate is accepted; `warnings` says so."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidCertificate(
                "This file is not PEM text. A .p12 or .pfx file must be converted first: "
                "openssl pkcs12 -in client.p12 -nodes -out client.pem"
            ) from None
    if len(text) > MAX_PEM_CHARS:
        raise InvalidCertificate(
            f"This is {len(text):,} characters long; a client certificate with its key is at "
            f"most {MAX_PEM_CHARS:,}."
        )
    text = normalize_pem(text)
    blocks = [(match.group(1), match.group(0)) for match in _PEM_BLOCK.finditer(text)]
    keys = [block for label, block in blocks if label.endswith("PRIVATE KEY")]
    certificate_blocks = [block for label, block in blocks if label == "CERTIFICATE"]
    if not keys and not certificate_blocks:
        raise InvalidCertificate(
            "This is not a PEM certificate with its key: paste (or upload) the client "
            "certificate, from -----BEGIN CERTIFICATE-----, followed by its private key, from "
            "-----BEGIN PRIVATE KEY-----, for example the output of cat client.crt client.key."
        )
    if not keys:
        raise InvalidCertificate(
            "This holds a certificate but no private key. The server checks that we hold the "
            "key: paste the certificate followed by its private key (cat client.crt client.key)."
        )
    if not certificate_blocks:
        raise InvalidCertificate(
            "This holds a private key but no certificate. Paste the client certificate "
            "(-----BEGIN CERTIFICATE-----) together with the key (cat client.crt client.key)."
        )
    if len(keys) > 1:
        raise InvalidCertificate(
            f"This holds {len(keys)} private keys; paste only the one that belongs to the "
            "certificate."
        )
    key = _load_key(keys[0])
    try:
        certificates = x509.load_pem_x509_certificates("\n".join(certificate_blocks).encode())
    except ValueError as error:
        raise InvalidCertificate(
            f"The certificate cannot be read ({error}). Paste it again in full, from "
            "-----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----."
        ) from None
    public = _public_der(key.public_key())
    leaf = next((c for c in certificates if _public_der(c.public_key()) == public), None)
    if leaf is None:
        about = "; ".join(
            f"{info.subject} (SHA-256 {info.sha256})" for info in map(describe, certificates)
        )
        raise InvalidCertificate(
            f"The private key does not belong to the certificate ({about}). Paste the key "
            "that was created together with this certificate's request."
        )
    chain = [leaf] + [c for c in certificates if c is not leaf]
    return ClientCertificate(
        certificate_pem="".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in chain
        ),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        info=describe(leaf),
    )


def _load_key(block: str) -> PrivateKeyTypes:
    encrypted = InvalidCertificate(
        "The private key is protected by a passphrase. Export it without one, for example "
        "openssl pkey -in client.key -out client-open.key (it asks for the passphrase once), "
        "and paste that: it is stored encrypted here and never shown again."
    )
    if block.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") or "ENCRYPTED" in block[:120]:
        raise encrypted
    try:
        key = serialization.load_pem_private_key(block.encode(), password=None)
    except TypeError:  # cryptography's way of saying "a password is needed"
        raise encrypted from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCertificate(
            "The private key cannot be read. Paste it again in full, from -----BEGIN PRIVATE "
            "KEY----- to -----END PRIVATE KEY-----."
        ) from None
    if not isinstance(key, _TLS_KEYS):
        raise InvalidCertificate(
            "This kind of private key cannot sign a TLS handshake; use an RSA, ECDSA or "
            "Ed25519 key."
        )
    return key
