"""Which stored sign-in credentials expire soon: pure, so the page and the notices agree."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from .certificates import InvalidCertificate, parse_pem_bundle
from .models import SmtpSettings
from .providers import CREDENTIAL_LABELS, PROVIDERS

WARN_DAYS = 30  # warn this long before; notices go out at 30, 7 and 1 days
NOTICE_DAYS = (30, 7, 1)


@dataclass(frozen=True)
class Expiring:
    credential: str  # what it is, in words
    expires_at: datetime.datetime

    def days_left(self, now: datetime.datetime) -> int:
        return max(0, (self.expires_at - now).days)

    def notice_threshold(self, now: datetime.datetime) -> int:
        """The notice this is due for: the smallest of 30, 7 and 1 days it is within."""
        return min(days for days in NOTICE_DAYS if self.days_left(now) <= days)


def _parse(value: str) -> datetime.datetime | None:
    try:
        moment = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def known_expiries(record: SmtpSettings) -> list[Expiring]:
    """Every stored credential whose expiry is known."""
    found = []
    info = record.oauth_credential_info or {}
    if record.oauth_credential_token and record.auth_method == "oauth2":
        when = _parse(info.get("not_after") or info.get("expires") or "")
        if when is not None:
            provider = PROVIDERS.get(record.oauth_provider)
            label = CREDENTIAL_LABELS.get(info.get("kind"), "the credential").split(" ", 1)[1]
            found.append(Expiring(f"{provider.label if provider else 'OAuth 2.0'} {label}", when))
    if record.client_certificate:
        try:
            certificate = parse_pem_bundle(record.client_certificate)[0]
        except InvalidCertificate:
            certificate = None
        if certificate is not None:
            found.append(
                Expiring(f"client certificate {certificate.subject}", certificate.not_after)
            )
    return found


def expiring_soon(record: SmtpSettings, now: datetime.datetime) -> list[Expiring]:
    return [
        e
        for e in known_expiries(record)
        if e.expires_at - now <= datetime.timedelta(days=WARN_DAYS)
    ]
