"""Notices before a stored sign-in credential expires: one event per credential at 30, 7 and 1
days before, however often the check runs (each worker runs it now and then)."""

from __future__ import annotations

import datetime

from django.utils import timezone

from smtpsettings import store
from smtpsettings.expiry import expiring_soon

from .models import Event
from .triggering import trigger

EVENT = "smtp.credential_expiring"


def announce_expiring_credentials(now: datetime.datetime | None = None) -> list[Event]:
    """Raise smtp.credential_expiring for each credential that reached a notice threshold
    it was not announced for yet. Returns the events raised."""
    now = now or timezone.now()
    raised = []
    for expiring in expiring_soon(store.load(), now):
        threshold = expiring.notice_threshold(now)
        expires_at = expiring.expires_at.isoformat()
        announced = Event.objects.filter(type=EVENT, payload__credential=expiring.credential)
        if any(
            event.payload["expires_at"] == expires_at and event.payload["days_left"] <= threshold
            for event in announced
        ):
            continue
        payload = {
            "credential": expiring.credential,
            "expires_at": expires_at,
            "days_left": expiring.days_left(now),
        }
        raised.append(trigger(EVENT, payload))
    return raised
