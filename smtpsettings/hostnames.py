"""Host names and IP addresses as the SMTP settings accept them."""

from __future__ import annotations

import ipaddress
import re

import idna

# Anything a paste can smuggle in: spaces, tabs, CR/LF and the other control characters.
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class InvalidHost(ValueError):
    """The text is not a host name or IP address; the message says why."""


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address written in `text` (IPv6 may be in brackets), or None."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def normalize_host(text: str, *, what: str = "server") -> str:
    """Return the host as stored: an IP address in its short form or a name in punycode.

    International names are stored in their ASCII (punycode) form because that is what
    DNS, TLS certificates and the SMTP dialogue use.
    """
    text = text.strip()
    if not text:
        raise InvalidHost(f"Enter the {what}'s host name or IP address.")
    if _FORBIDDEN.search(text):
        raise InvalidHost(
            f"The {what} name cannot contain spaces, line breaks or control characters."
        )
    if "://" in text:
        raise InvalidHost(
            f"Enter only the {what}'s host name, such as smtp.example.com, without a scheme."
        )
    address = parse_ip(text)
    if address is not None:
        return address.compressed
    if text.count(":") == 1 and text.rsplit(":", 1)[1].isdigit():
        raise InvalidHost("Enter the port in the Port field, not after the server name.")
    name = text.rstrip(".")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        raise InvalidHost(f"{text!r} is not a valid host name ({error}).") from None
    ascii_name = ascii_name.lower()
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidHost(
            f"{text!r} is not a valid host name: use letters, digits, hyphens and dots, "
            "such as smtp.example.com."
        )
    if labels[-1].isdigit():
        raise InvalidHost(f"{text!r} is neither a valid IP address nor a host name.")
    return ascii_name


def unicode_host(host: str) -> str:
    """The readable form of a stored punycode name (the name itself when it is not one)."""
    if "xn--" not in host:
        return host
    try:
        return idna.decode(host)
    except idna.IDNAError:
        return host


def is_loopback(host: str) -> bool:
    """True for `localhost` and for loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    address = parse_ip(host)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def display_host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address in brackets so the colon stays readable."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
