"""What a stored secret is bound to: the server it may go to and how that server is verified.

A password is sealed together with the binding of the settings it was entered for and is only
revealed while the settings have exactly that binding. Saving settings that loosen the binding
(another server, no encryption, verification off, another trusted certificate, another pin)
drops the password unless it is entered again; settings that only tighten it keep the password,
sealed anew. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import astuple, dataclass, replace

from .certificates import InvalidCertificate, parse_pem_bundle
from .plan import ConnectionPlan, Security

# Both kinds of verified TLS protect a password equally; opportunistic TLS (no certificate
# checked, plain when STARTTLS is not offered) is weaker, and plain SMTP weaker still.
_STRENGTH = {Security.PLAIN: 0, Security.OPPORTUNISTIC: 1, Security.STARTTLS: 2, Security.SMTPS: 2}


@dataclass(frozen=True)
class Binding:
    host: str
    port: int
    username: str
    security: str
    verify_peer: bool
    trusted: tuple[str, ...]  # SHA-256 of each trusted certificate, sorted
    pin: str  # "sha256:<hex>", or "" without a pin

    def encode(self) -> list:
        """A JSON array: unambiguous whatever colons a host or user name holds."""
        return list(astuple(self))

    @classmethod
    def decode(cls, value: object) -> Binding | None:
        if not isinstance(value, list) or len(value) != 7:
            return None
        host, port, username, security, verify_peer, trusted, pin = value
        return cls(host, port, username, security, verify_peer, tuple(trusted), pin)


def trusted_fingerprints(pem: str) -> tuple[str, ...]:
    if not pem.strip():
        return ()
    try:
        return tuple(sorted({info.sha256 for info in parse_pem_bundle(pem)}))
    except InvalidCertificate:  # never saved through the form; bind to the text itself
        return ("text:" + hashlib.sha256(pem.encode("utf-8")).hexdigest(),)


def binding_of(plan: ConnectionPlan) -> Binding:
    pin = plan.peer_fingerprint
    return Binding(
        host=plan.host,
        port=plan.port,
        username=plan.username,
        security=plan.security.value,
        verify_peer=plan.verify_peer,
        trusted=trusted_fingerprints(plan.trusted_certificate),
        pin=f"{pin.algorithm}:{pin.hexdigest}" if pin else "",
    )


def same_or_upgraded(sealed: Binding, current: Binding) -> bool:
    """May a secret sealed for `sealed` be revealed for `current`? Only for the same binding,
    or one that differs only by plain SMTP having become opportunistic TLS (what an upgrade
    does to port 25 and loopback settings): that only tightens."""
    if sealed == current:
        return True
    upgraded = (sealed.security, current.security) == (Security.PLAIN, Security.OPPORTUNISTIC)
    return upgraded and replace(sealed, security=current.security) == current


def loosened(old: Binding, new: Binding) -> list[str]:
    """What going from `old` to `new` loosens, in words; empty when nothing does."""
    reasons = []
    if (old.host, old.port, old.username) != (new.host, new.port, new.username):
        reasons.append("the server, port or user changed")
    if _STRENGTH[Security(new.security)] < _STRENGTH[Security(old.security)]:
        reasons.append(
            "the connection is no longer encrypted"
            if new.security == Security.PLAIN
            else "the connection no longer requires verified TLS"
        )
    if old.verify_peer and not new.verify_peer:
        reasons.append("certificate verification was turned off")
    if not set(new.trusted) <= set(old.trusted):
        reasons.append("another certificate is trusted")
    if old.pin and new.pin != old.pin:
        reasons.append(
            "the certificate fingerprint pin changed" if new.pin else "the pin was removed"
        )
    return reasons
