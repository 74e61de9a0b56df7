"""What the Outbox page reads and the actions it offers, apart from the page itself."""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass

from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Substr
from django.utils import timezone

from smtpsettings import keyring

from . import keyset
from .backends import enqueue_delivery
from .models import (
    OutboundBatch,
    OutboundBody,
    OutboundEmail,
    OutboundRecipient,
    OutboundStatusCount,
    Status,
)
from .policy import PENDING, SENT

RETRYABLE = (Status.QUEUED, Status.FAILED)
CANCELLABLE = (Status.QUEUED,)


@dataclass(frozen=True)
class SearchTerm:
    """What a search box entry means: kind is "message-id", "domain", "domain-or-prefix",
    "prefix" or "" (nothing to search for); value is lower case except for a Message-ID."""

    kind: str
    value: str


def parse_query(query: str) -> SearchTerm:
    """How search() reads the search box (see there)."""
    query = query.strip()
    if not query:
        return SearchTerm("", "")
    if query.startswith("<") and query.endswith(">"):
        return SearchTerm("message-id", query)
    query = query.lower()
    if query.startswith("@"):
        return SearchTerm("domain", query[1:])
    if "@" not in query and "." in query:
        return SearchTerm("domain-or-prefix", query)
    return SearchTerm("prefix", query)


def _prefix(field: str, value: str) -> Q:
    """Values of `field` starting with `value`, served by its index on both databases:
    LIKE 'value%' on PostgreSQL (the index has varchar_pattern_ops), and on SQLite, whose LIKE
    ignores case and so skips a plain index, the byte range the prefix spans."""
    if connection.vendor == "postgresql":
        return Q(**{f"{field}__startswith": value})
    return Q(**{f"{field}__gte": value, f"{field}__lt": value + "\U0010ffff"})


def search(status: str = "", category: str = "", query: str = "") -> QuerySet[OutboundEmail]:
    """The outbox's messages, newest first, with `status` and `category` ("" = any), whose
    recipients match `query` (case does not matter):

    - "<id@host>": the message with that Message-ID, exactly;
    - "@example.com": a recipient at that domain, exactly (not its subdomains);
    - "example.com" (a dot, no "@"): a recipient at that domain, or whose address starts so;
    - anything else ("bob", "bob@exa", "bob@example.com"): a recipient whose address starts
      with it; an address is its own prefix, so a whole address finds that recipient.

    Each is an index lookup in OutboundRecipient (or on message_id), so the cost follows the
    matches, not the outbox's size."""
    emails = OutboundEmail.objects.all()
    if status:
        emails = emails.filter(status=status)
    if category:
        emails = emails.filter(category=category)
    term = parse_query(query)
    if term.kind == "message-id":
        return emails.filter(message_id=term.value)
    if term.kind == "domain":
        match = Q(domain=term.value)
    elif term.kind == "domain-or-prefix":
        match = Q(domain=term.value) | _prefix("address", term.value)
    elif term.kind == "prefix":
        match = _prefix("address", term.value)
    else:
        return emails
    return emails.filter(id__in=OutboundRecipient.objects.filter(match).values("email_id"))


# A search term with at most this many recipient rows is read whole (through its index) and
# its newest messages sorted out; past it, the term is common enough that walking the
# recipients newest first meets a page of matches soon. Either way a page reads a bounded
# number of rows, however long the outbox.
FEW = 2000


def listing(status: str = "", category: str = "", query: str = "") -> QuerySet | keyset.Source:
    """What the Outbox page pages through (notifications.keyset): search()'s messages, and
    for a recipient search their ids from OutboundRecipient, newest (highest id) first, so a
    page never reads every match: "oncall@" may be on half the outbox."""
    term = parse_query(query)
    if term.kind in ("", "message-id"):
        return search(status, category, query)
    recipients = OutboundRecipient.objects.all()
    if status:
        recipients = recipients.filter(email__status=status)
    if category:
        recipients = recipients.filter(email__category=category)
    common = _is_common(term)
    # A common term walks the email_id index newest first and tests each recipient, rather
    # than read every match through the address index and sort them all.
    matching = _matching(recipients, term, indexed=not common)
    matching = matching.values_list("email_id", flat=True).distinct()

    def ids(newest_first: bool, beyond: int | None, limit: int) -> list[int]:
        rows = matching.order_by("-email_id" if newest_first else "email_id")
        if beyond is not None:
            rows = (
                rows.filter(email_id__lt=beyond)
                if newest_first
                else rows.filter(email_id__gt=beyond)
            )
        return list(rows[:limit])

    return keyset.ById(ids, OutboundEmail.objects.all())


def _is_common(term: SearchTerm) -> bool:
    """Whether more than FEW recipients match: at most FEW + 1 of them are read (through the
    index, or by a scan that meets that many soon), whatever the table holds. No ORDER BY:
    PostgreSQL's pattern index has no order to offer it."""
    probes = []
    if term.kind in ("domain", "domain-or-prefix"):
        probes.append(OutboundRecipient.objects.filter(domain=term.value))
    if term.kind in ("prefix", "domain-or-prefix"):
        probes.append(OutboundRecipient.objects.filter(_prefix("address", term.value)))
    return any(len(probe.values_list("email_id")[: FEW + 1]) > FEW for probe in probes)


def _matching(rows: QuerySet, term: SearchTerm, *, indexed: bool) -> QuerySet:
    """The recipient rows a term matches. A domain goes through (domain, email_id), already in
    id order; an address prefix through its index (`indexed`) or, for a common one, by a
    comparison no index serves, so that the database walks email_id instead."""
    if indexed:
        prefix = _prefix("address", term.value)
    else:
        rows = rows.alias(address_head=Substr("address", 1, len(term.value)))
        prefix = Q(address_head=term.value)
    if term.kind == "domain":
        return rows.filter(domain=term.value)
    if term.kind == "domain-or-prefix":
        return rows.filter(Q(domain=term.value) | prefix)
    return rows.filter(prefix)


def counts_by_status() -> dict[str, int]:
    """Messages by status, exact, from the counts the triggers keep (a few dozen rows)."""
    counts = dict(
        OutboundStatusCount.objects.values_list("status").annotate(total=Sum("n")).order_by()
    )
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
    """Progress of the latest multi-message sends, such as a bulk invitation: the `limit`
    newest batches, their messages counted through the (batch, status) index."""
    batches = list(OutboundBatch.objects.order_by("-created_at", "-id")[:limit])
    counts = Counter()
    for batch_id, status, n in (
        # Every status (a few rows a batch): a status filter could lead the planner to the
        # status indexes, which hold every batch's messages.
        OutboundEmail.objects.filter(batch__in=batches)
        .values_list("batch", "status")
        .annotate(n=Count("*"))
        .order_by()
    ):
        counts[batch_id, status] = n
    return [
        BulkProgress(
            batch=batch.key,
            subject=batch.subject,
            total=batch.total,
            sent=counts[batch.pk, Status.SENT],
            failed=counts[batch.pk, Status.FAILED],
            started=batch.created_at,
        )
        for batch in batches
    ]


def cannot_retry(email: OutboundEmail) -> str:
    """Why this message cannot be tried again, or "" when it can."""
    if not email.has_body:
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
        updated = OutboundEmail.objects.filter(
            pk=email.pk, status__in=RETRYABLE, body__isnull=False
        ).update(status=Status.QUEUED, next_attempt_at=timezone.now(), recipients=recipients)
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


def reencrypt_bodies(batch_size: int = 500) -> tuple[int, int]:
    """Move every stored body to the newest key, a batch per transaction so workers keep
    going meanwhile. Returns (re-encrypted, undecryptable)."""
    done = unreadable = 0
    after = 0
    while True:
        rows = list(
            OutboundBody.objects.filter(pk__gt=after)
            .order_by("pk")
            .values_list("pk", "token")[:batch_size]
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
                done += OutboundBody.objects.filter(pk=pk, token=token).update(token=rotated)
