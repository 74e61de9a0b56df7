"""The delivery task. Any number of workers may run it; each keeps its SMTP connection."""

from __future__ import annotations

import datetime
import logging
import time

from django.conf import settings
from django.utils import timezone
from django_tasks import task

from .credential_notices import announce_expiring_credentials
from .delivery import Courier, schedule_retries

log = logging.getLogger(__name__)
_courier: Courier | None = None  # one per worker process, so its connection outlives a task


def courier() -> Courier:
    global _courier
    if _courier is None:
        _courier = Courier()
    return _courier


def watchdog() -> None:
    """If this worker dies holding messages, wake another one when their lease runs out."""
    lease = datetime.timedelta(seconds=settings.OUTBOX_LEASE_SECONDS + 1)
    deliver_outbox.using(run_after=timezone.now() + lease).enqueue()


_next_credential_check = 0.0  # monotonic time of this worker's next expiry check


def check_credentials_hourly() -> None:
    """Now and then, announce credentials that expire soon; each notice is raised once."""
    global _next_credential_check
    if time.monotonic() < _next_credential_check:
        return
    _next_credential_check = time.monotonic() + 3600
    try:
        announce_expiring_credentials()
    except Exception:  # a notice must never stop delivery
        log.exception("Checking SMTP credentials for expiry failed")


@task()
def deliver_outbox() -> int:
    """Deliver every due message, then schedule a wake-up for the next retry."""
    check_credentials_hourly()
    handled = courier().drain(on_claim=watchdog)
    wake = schedule_retries()
    if wake is not None:  # retries are waiting: wake up for the first, at once if it is due
        if wake > timezone.now():
            deliver_outbox.using(run_after=wake).enqueue()
        else:
            deliver_outbox.enqueue()
    if handled:
        log.info("Outbox: handled %d message(s): %s", handled, dict(courier().counts))
    return handled
