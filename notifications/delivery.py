"""Delivering the outbox: claim due messages, send them over one transport, record results.

Workers claim in batches under a lease, so two workers never send the same message at the
same time (SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite serializes writers).
Each result is committed right after the server's reply: a duplicate is possible only when
a worker dies between the server's 250 and that commit. Messages of a worker that died are
claimed again once its lease runs out. The commit that records delivery also drops the body.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from smtpsettings import store
from smtpsettings.backends import transport_for
from smtpsettings.problems import SmtpProblem
from smtpsettings.transport import SmtpTransport

from .models import BodyUnavailable, DeliveryAttempt, OutboundEmail, Status
from .policy import RetryPolicy, pending_addresses, record_problem, record_refusals, settle

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


# A problem at any of these steps concerns the connection, not the message.
MESSAGE_STEPS = ("mail", "rcpt", "data")


def retry_policy() -> RetryPolicy:
    return RetryPolicy(
        first_delay=settings.OUTBOX_RETRY_FIRST_DELAY,
        window=datetime.timedelta(hours=settings.OUTBOX_RETRY_HOURS),
    )


def due(cutoff: datetime.datetime, now: datetime.datetime):
    """Messages a worker may claim: queued and due by `cutoff`, or held by a worker whose
    lease has run out."""
    return OutboundEmail.objects.filter(
        Q(status=Status.QUEUED, next_attempt_at__lte=cutoff)
        | Q(status=Status.SENDING, lease_until__lt=now)
    )


def claim(worker: str, size: int, cutoff: datetime.datetime | None = None) -> list[OutboundEmail]:
    now = timezone.now()
    lease = now + datetime.timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)
    with transaction.atomic():
        candidates = due(cutoff or now, now).order_by("next_attempt_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        ids = list(candidates.values_list("id", flat=True)[:size])
        if not ids:
            return []
        OutboundEmail.objects.filter(id__in=ids).update(
            status=Status.SENDING, claimed_by=worker, lease_until=lease, attempts=F("attempts") + 1
        )
    return list(OutboundEmail.objects.filter(id__in=ids, claimed_by=worker).order_by("id"))


@dataclass
class Courier:
    """A worker's connection to the SMTP server, kept across batches and tasks, so the
    help page's ping_threshold and restart_threshold apply to the outbox."""

    worker: str = WORKER_ID
    transport: SmtpTransport | None = None
    settings_version: object = None
    counts: Counter = field(default_factory=Counter)  # outcomes, for the worker's log

    def transport_for_current_settings(self) -> SmtpTransport:
        record = store.load()
        version = (record.updated_at, record.pk)
        if self.transport is None or version != self.settings_version:
            self.close()
            self.transport = transport_for(record)
            self.settings_version = version
        return self.transport

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def drain(
        self, batch_size: int | None = None, on_claim: Callable[[], None] | None = None
    ) -> int:
        """Deliver every message that was due when the drain began, batch after batch.
        Returns how many were handled. A retry scheduled meanwhile waits for its time.
        `on_claim` runs once, when the first batch is claimed."""
        started = timezone.now()
        handled = 0
        down: SmtpProblem | None = None  # the connection failed: the rest waits for a retry
        while batch := claim(self.worker, batch_size or settings.OUTBOX_BATCH_SIZE, started):
            if on_claim is not None and not handled:
                on_claim()
            handled += len(batch)
            if down is None:
                try:
                    transport = self.transport_for_current_settings()
                except SmtpProblem as problem:  # settings incomplete or password unreadable
                    down = problem
            for email in batch:
                if down is not None:
                    self.record(email, problem=down)
                    continue
                problem = self.deliver(transport, email)
                if problem is not None and problem.step not in MESSAGE_STEPS:
                    down = problem  # do not knock on the same closed door for every message
        return handled

    def deliver(self, transport: SmtpTransport, email: OutboundEmail) -> SmtpProblem | None:
        recipients = pending_addresses(email.recipients)
        try:
            data = email.message_bytes()
        except BodyUnavailable as error:
            # A problem of this message alone: fail it, and the connection serves the rest.
            self.record(email, problem=SmtpProblem("body", str(error), kind="body-unavailable"))
            return None
        try:
            refused = transport.send(email.envelope_from, recipients, data)
        except SmtpProblem as problem:
            self.record(email, problem=problem)
            return problem
        self.record(email, refused=refused)
        return None

    def record(
        self,
        email: OutboundEmail,
        *,
        refused: dict[str, tuple[int, str]] | None = None,
        problem: SmtpProblem | None = None,
    ) -> None:
        now = timezone.now()
        if problem is None:
            recipients = record_refusals(email.recipients, refused or {})
        else:
            recipients = record_problem(email.recipients, problem)
        status = settle(recipients)
        changes: dict = {"recipients": recipients, "claimed_by": "", "lease_until": None}
        if status == Status.QUEUED:
            when = retry_policy().next_attempt(email.created_at, now, email.attempts)
            if when is None:  # the retry window is over: refuse who is left
                recipients = [
                    {**r, "status": "refused"} if r["status"] == "pending" else r
                    for r in recipients
                ]
                status = settle(recipients)
                changes["recipients"] = recipients
            else:
                changes["next_attempt_at"] = when
        changes["status"] = status
        if status == Status.SENT:
            changes["sent_at"] = now
            changes["message_token"] = ""  # nobody needs it again: only the mailbox keeps it
        changes["last_error"] = str(problem) if problem is not None else ""
        outcome = _outcome(status, refused, problem)
        self.counts[outcome] += 1
        with transaction.atomic():
            # Only the claim holder writes: a worker whose lease ran out lost the message.
            OutboundEmail.objects.filter(pk=email.pk, claimed_by=self.worker).update(**changes)
            DeliveryAttempt.objects.create(
                email=email,
                at=now,
                worker=self.worker,
                outcome=outcome,
                step=problem.step if problem else "data",
                reply=problem.server_reply if problem else _refusal_text(refused),
                advice=problem.advice if problem else "",
            )


def _outcome(status: str, refused, problem) -> str:
    if status == Status.SENT:
        return "partly sent" if refused else "sent"
    if status == Status.QUEUED:
        return "retry"
    return "failed"


def _refusal_text(refused: dict[str, tuple[int, str]] | None) -> str:
    if not refused:
        return "250 accepted"
    return "; ".join(f"{address}: {code} {text}" for address, (code, text) in refused.items())


def schedule_retries() -> datetime.datetime | None:
    """When the next queued message is due, for a deferred wake-up."""
    nxt = OutboundEmail.objects.filter(status=Status.QUEUED).order_by("next_attempt_at").first()
    return nxt.next_attempt_at if nxt else None


def retry_soon() -> int:
    """After the SMTP settings change: waiting messages are tried again now."""
    count = OutboundEmail.objects.filter(
        status=Status.QUEUED, next_attempt_at__gt=timezone.now()
    ).update(next_attempt_at=timezone.now())
    return count
