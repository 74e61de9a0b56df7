"""A worker's heartbeat: its row in WorkerHeartbeat, and what it counted since the last beat.

Called every HEALTH_HEARTBEAT_SECONDS from the worker's lease thread (notifications/worker.py),
apart from sending, so a slow send never makes a live worker look dead. One short transaction
per beat: the row, and the tallies and last deliveries that deliverystats counted in memory.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from collections.abc import Mapping

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from notifications import deliverystats
from notifications.deliverystats import Counted, Last
from notifications.models import DeliveryAttempt

from .models import LastDelivery, Tally, WorkerHeartbeat

log = logging.getLogger(__name__)

KEEP_GONE = datetime.timedelta(days=7)  # rows of workers not seen for this long are deleted
PRUNE_EVERY = 3600.0  # seconds, per process
_next_prune = 0.0


class Heartbeat:
    """One worker process's heartbeat."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.started_at = timezone.now()
        self.first = True

    def beat(self, doing: str, counts: Mapping[str, int], *, stopped: bool = False) -> None:
        """Say this worker is alive (or, with `stopped`, that it exited cleanly), and write
        what it counted. What cannot be written is kept for the next beat."""
        counted = deliverystats.take()
        try:
            with transaction.atomic():
                self._write_row(doing, dict(counts), stopped)
                write_counted(counted)
        except BaseException:
            deliverystats.give_back(counted)
            raise
        self.first = False
        prune_now_and_then()

    def _write_row(self, doing: str, counts: dict[str, int], stopped: bool) -> None:
        now = timezone.now()
        values = {"last_seen": now, "doing": doing, "counts": counts}
        if stopped:
            values["stopped_at"] = now
        if not self.first and WorkerHeartbeat.objects.filter(worker=self.worker).update(**values):
            return
        # The first beat (or the row was pruned): a row of our own. A dead process with the
        # same id (its pid reused) left one: it is this process's now.
        host, _, pid = self.worker.rpartition(":")
        WorkerHeartbeat.objects.update_or_create(
            worker=self.worker,
            defaults={
                "host": host or socket.gethostname(),
                "pid": int(pid) if pid.isdigit() else os.getpid(),
                "started_at": self.started_at,
                "stopped_at": values.pop("stopped_at", None),
                **values,
            },
        )


def write_counted(counted: Counted) -> None:
    """Add `counted` to the database; inside the caller's transaction."""
    # Sorted, so two workers adding to the same rows lock them in the same order.
    for (metric, key), amount in sorted(counted.tallies.items()):
        _add(metric, key, amount)
    for kind, last in (
        (LastDelivery.SUCCESS, counted.success),
        (LastDelivery.FAILURE, counted.failure),
    ):
        if last is not None:
            _remember(kind, last)


def _add(metric: str, key: str, amount: float) -> None:
    if Tally.objects.filter(metric=metric, key=key).update(value=F("value") + amount):
        return
    try:
        with transaction.atomic():  # a savepoint: another worker may create it first
            Tally.objects.create(metric=metric, key=key, value=amount)
    except IntegrityError:
        Tally.objects.filter(metric=metric, key=key).update(value=F("value") + amount)


def _remember(kind: str, last: Last) -> None:
    values = {
        "at": last.at,
        "email_id": last.email_id,
        "subject": last.subject,
        "outcome": last.outcome,
        "reason": last.reason
        or (attempt_reason(last.email_id) if kind == LastDelivery.FAILURE else ""),
    }
    # Only over an older one: another worker may have written a later delivery meanwhile.
    if LastDelivery.objects.filter(kind=kind, at__lte=last.at).update(**values):
        return
    if LastDelivery.objects.filter(kind=kind).exists():
        return
    try:
        with transaction.atomic():
            LastDelivery.objects.create(kind=kind, **values)
    except IntegrityError:
        LastDelivery.objects.filter(kind=kind, at__lte=last.at).update(**values)


def attempt_reason(email_id: int | None) -> str:
    """What the server replied to a message's last attempt, when no problem said it (each
    recipient's reply: "bob@example.com: 550 No such user"). One indexed read per beat."""
    if email_id is None:
        return ""
    attempt = (
        DeliveryAttempt.objects.filter(email_id=email_id)
        .order_by("-id")
        .values_list("reply", "advice")
        .first()
    )
    if attempt is None:
        return ""
    reply, advice = attempt
    return f"{advice} (Server replied: {reply})" if advice and reply else advice or reply


def prune_now_and_then() -> None:
    """Forget workers not seen for a week, once an hour per process."""
    global _next_prune
    if time.monotonic() < _next_prune:
        return
    _next_prune = time.monotonic() + PRUNE_EVERY
    WorkerHeartbeat.objects.filter(last_seen__lt=timezone.now() - KEEP_GONE).delete()
