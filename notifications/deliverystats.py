"""What each delivery attempt came to, for the console and GET /metrics (the health app).

The courier calls recorded() inside the transaction that records each attempt. It counts in
this process's memory only, once that transaction commits (a rolled-back attempt is not
counted): no SQL per message. The worker's heartbeat (health.heartbeat) takes what was counted
since the last one and adds it to the database, where the web processes read it.
"""

from __future__ import annotations

import datetime
import math
import threading
from collections import Counter
from dataclasses import dataclass, field

from django.db import transaction

from smtpsettings.problems import SmtpProblem

# Tally metrics and how their keys are spelled.
DELIVERIES = "deliveries"  # "outcome|reason", e.g. "sent|none", "failed|recipients-refused"
LATENCY = "latency_bucket"  # a bucket's upper bound ("5", "+Inf"): deliveries no slower
LATENCY_SUM = "latency_sum"  # key "": seconds from stored to delivered, summed
TOKEN_REFRESHES = "token_refreshes"  # "ok" or "failed": OAuth access tokens asked for

# Seconds from the message being stored to the server's 250: a worker at hand delivers in
# well under a second; retries take minutes to hours (OUTBOX_RETRY_HOURS is 24 by default).
LATENCY_BUCKETS = (0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, math.inf)
DELIVERED = ("sent", "partly sent")
NOT_DELIVERED = ("failed", "retry", "partly sent")


def bucket_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def bucket_of(seconds: float) -> str:
    """The label of the smallest bucket that holds `seconds` (buckets are stored one by one;
    /metrics adds them up into Prometheus's cumulative ones)."""
    return bucket_label(next(b for b in LATENCY_BUCKETS if seconds <= b))


def reason_of(outcome: str, problem: SmtpProblem | None) -> str:
    """A short, bounded label for why an attempt came to `outcome`: the problem's kind, or
    what the recipients' replies say when the server answered for each."""
    if problem is not None:
        return problem.kind or "other"
    if outcome == "sent":
        return "none"
    if outcome == "retry":
        return "recipients-deferred"  # 4xx to RCPT: tried again later
    return "recipients-refused"  # 5xx to RCPT: "failed", or "partly sent" to the others


@dataclass
class Last:
    """A delivery as Home shows it: when, which message, and what it came to."""

    at: datetime.datetime
    email_id: int | None
    subject: str
    outcome: str
    reason: str  # "" when the server's replies tell it (read from the attempt when flushed)


@dataclass
class Counted:
    """What this process counted since the heartbeat last took it."""

    tallies: Counter = field(default_factory=Counter)  # (metric, key) -> amount
    success: Last | None = None
    failure: Last | None = None

    def __bool__(self) -> bool:
        return bool(self.tallies) or self.success is not None or self.failure is not None

    def add(self, other: Counted) -> None:
        self.tallies.update(other.tallies)
        self.success = _later(self.success, other.success)
        self.failure = _later(self.failure, other.failure)


def _later(one: Last | None, other: Last | None) -> Last | None:
    if one is None or (other is not None and other.at >= one.at):
        return other
    return one


_lock = threading.Lock()
_counted = Counted()


def counted_for(
    email: object, outcome: str, problem: SmtpProblem | None, at: datetime.datetime
) -> Counted:
    """What one attempt adds (pure)."""
    counted = Counted()
    counted.tallies[(DELIVERIES, f"{outcome}|{reason_of(outcome, problem)}")] += 1
    last = Last(
        at=at,
        email_id=getattr(email, "pk", None),
        subject=getattr(email, "subject", "")[:255],
        outcome=outcome,
        reason=str(problem) if problem is not None else "",
    )
    if outcome in DELIVERED:
        created = getattr(email, "created_at", None) or at
        seconds = max(0.0, (at - created).total_seconds())
        counted.tallies[(LATENCY, bucket_of(seconds))] += 1
        counted.tallies[(LATENCY_SUM, "")] += seconds
        counted.success = last
    if outcome in NOT_DELIVERED:
        counted.failure = last
    return counted


def recorded(
    email: object, outcome: str, problem: SmtpProblem | None, at: datetime.datetime
) -> None:
    """Called by the courier inside the transaction that records an attempt of `email`."""
    counted = counted_for(email, outcome, problem, at)
    transaction.on_commit(lambda: give_back(counted))


def token_refresh_seen(sender: object = None, *, ok: bool, **kwargs: object) -> None:
    """smtpsettings.tokencache.token_refreshed: an access token was asked for."""
    counted = Counted()
    counted.tallies[(TOKEN_REFRESHES, "ok" if ok else "failed")] += 1
    give_back(counted)


def take() -> Counted:
    """Everything counted since the last take(), for the heartbeat to write."""
    global _counted
    with _lock:
        taken, _counted = _counted, Counted()
    return taken


def give_back(counted: Counted) -> None:
    """Count `counted` (again): a new attempt, or a take() the heartbeat could not write."""
    with _lock:
        _counted.add(counted)
