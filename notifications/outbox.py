"""What the Outbox page reads and the actions it offers, apart from the page itself."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Count, Min, Q, QuerySet
from django.utils import timezone

from smtpsettings import keyring

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


def cannot_retry(email: OutboundEmail) -> str:
    """Why this message cannot be tried again, or "" when it can."""
    if not email.message_token:
        return "It cannot be sent again: its body was removed after delivery."
    if email.status not in RETRYABLE:
        return "Only waiting or failed mail can be retried."
    return ""


def retry(email: OutboundEmail) -> bool:
    """Try again now; recipients refused before get another chance too."""
    if cannot_retry(email):
        return False
    recipients = [r if r["status"] == SENT else {**r, "status": PENDING} for r in email.recipients]
    with transaction.atomic():
        updated = (
            OutboundEmail.objects.filter(pk=email.pk, status__in=RETRYABLE)
            .exclude(message_token="")
            .update(status=Status.QUEUED, next_attempt_at=timezone.now(), recipients=recipients)
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


def reencrypt_bodies(batch_size: int = 500) -> tuple[int, int]:
    """Move every stored body to the newest key, a batch per transaction so workers keep
    going meanwhile. Returns (re-encrypted, undecryptable)."""
    done = unreadable = 0
    after = 0
    while True:
        rows = list(
            OutboundEmail.objects.filter(pk__gt=after)
            .exclude(message_token="")
            .order_by("pk")
            .values_list("pk", "message_token")[:batch_size]
        )
        if not rows:
            return done, unreadable
        after = rows[-1][0]
        with transaction.atomic():
            for pk, token in rows:
                try:
                    rotated = keyring.reencrypt_bytes(token.encode("ascii")).decode("ascii")
                except (keyring.Undecryptable, UnicodeError):
                    unreadable += 1
                    continue
                # Only where nothing changed meanwhile: a worker may have delivered the message
                # and dropped its body, which must stay dropped.
                done += OutboundEmail.objects.filter(pk=pk, message_token=token).update(
                    message_token=rotated
                )
