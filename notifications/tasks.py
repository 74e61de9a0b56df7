"""The delivery task. Any number of workers may run it; each keeps its SMTP connection."""

from __future__ import annotations

import logging

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


@task()
def deliver_outbox() -> int:
    """Deliver every due message, then schedule a wake-up for the next retry."""
    handled = courier().drain()
    wake = schedule_retries()
    if wake is not None and wake > timezone.now():
        deliver_outbox.using(run_after=wake).enqueue()
    if handled:
        log.info("Outbox: handled %d message(s): %s", handled, dict(courier().counts))
    return handled
