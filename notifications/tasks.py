"""The delivery task. Any number of workers may run it; each keeps its SMTP connection."""

from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.utils import timezone
from django_tasks import task

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


@task()
def deliver_outbox() -> int:
    """Deliver every due message, then schedule a wake-up for the next retry."""
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
