"""What the Outbox page reads and the actions it offers, apart from the page itself."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from .backends import enqueue_delivery
from .models import OutboundEmail, Status
from .policy import PENDING, SENT

RETRYABLE = (Status.QUEUED, Status.FAILED)
CANCELLABLE = (Status.QUEUED,)


def search(status: str = "", category: str = "", query: str = "") -> QuerySet[OutboundEmail]:
    emails = OutboundEmail.objects.all()
    if status:
        emails = emails.filter(status=status)
    if category:
        emails = emails.filter(category=category)
    if query:
        emails = emails.filter(Q(to_text__contains=query.lower()) | Q(subject__icontains=query))
    return emails


def counts_by_status() -> dict[str, int]:
    counts = dict(OutboundEmail.objects.values_list("status").annotate(n=Count("id")))
    return {value: counts.get(value, 0) for value in Status.values}


@dataclass
class BulkProgress:
    batch: str
    subject: str
    total: int
    sent: int
    failed: int
    started: datetime.datetime

    @property
    def done(self) -> bool:
        return self.sent + self.failed >= self.total

    def __str__(self) -> str:
        return f"{self.sent:,} of {self.total:,} delivered, {self.failed:,} failed"


def recent_bulk_sends(limit: int = 5) -> list[BulkProgress]:
    """Progress of the latest multi-message sends, such as a bulk invitation."""
    rows = (
        OutboundEmail.objects.exclude(batch="")
        .values("batch")
        .annotate(
            total=Count("id"),
            sent=Count("id", filter=Q(status=Status.SENT)),
            failed=Count("id", filter=Q(status=Status.FAILED)),
            started=Min("created_at"),
            subject=Min("subject"),
        )
        .order_by("-started")[:limit]
    )
    return [BulkProgress(**row) for row in rows]


def retry(email: OutboundEmail) -> bool:
    """Try again now; recipients refused before get another chance too."""
    if email.status not in RETRYABLE:
        return False
    recipients = [r if r["status"] == SENT else {**r, "status": PENDING} for r in email.recipients]
    with transaction.atomic():
        updated = OutboundEmail.objects.filter(pk=email.pk, status__in=RETRYABLE).update(
            status=Status.QUEUED, next_attempt_at=timezone.now(), recipients=recipients
        )
        if updated:
            transaction.on_commit(enqueue_delivery)
    return bool(updated)


def cancel(email: OutboundEmail) -> bool:
    """Stop a message that is waiting. One a worker holds right now cannot be stopped."""
    return bool(
        OutboundEmail.objects.filter(pk=email.pk, status__in=CANCELLABLE).update(
            status=Status.CANCELLED
        )
    )


def purge_sent(older_than: datetime.timedelta) -> int:
    cutoff = timezone.now() - older_than
    _, deleted = OutboundEmail.objects.filter(status=Status.SENT, sent_at__lt=cutoff).delete()
    return deleted.get(OutboundEmail._meta.label, 0)  # not counting their attempts
