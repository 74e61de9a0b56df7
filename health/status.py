"""Is mail going out? What the banner, Home, /readyz and /metrics decide, and what they read.

The decisions are pure functions of a `Snapshot`; `snapshot()` reads it with a few indexed
queries (a worker seen lately, the oldest due message, the breaker, the last few attempts).
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from notifications.models import Breaker, DeliveryAttempt, OutboundEmail, Status

from .models import WorkerHeartbeat

ALIVE, GONE, STOPPED = "alive", "gone", "stopped"
START_COMMAND = ".venv/bin/python manage.py outbox_worker"
FAILING = ("failed", "retry")


def worker_state(
    last_seen: datetime.datetime,
    stopped_at: datetime.datetime | None,
    now: datetime.datetime,
    timeout: float,
) -> str:
    """alive (seen within `timeout` seconds), stopped (it said so on its way out) or gone
    (killed, crashed, its machine down: it just stopped being seen)."""
    if stopped_at is not None:
        return STOPPED
    return ALIVE if (now - last_seen).total_seconds() <= timeout else GONE


@dataclass(frozen=True)
class Snapshot:
    """What the health decisions need, as read at `now`."""

    now: datetime.datetime
    worker_alive: bool
    last_worker_seen: datetime.datetime | None  # the latest heartbeat of any worker
    last_worker_stopped: bool  # that latest one exited cleanly
    oldest_due: datetime.datetime | None  # the queued message due the longest
    breaker_until: datetime.datetime | None  # the queue waits for the server until then
    breaker_reason: str
    recent_outcomes: tuple[tuple[str, datetime.datetime, str], ...] = ()  # newest first


@dataclass(frozen=True)
class Problem:
    """One line of the banner: what is wrong, and what to do about it."""

    key: str  # "no-worker", "mail-waiting", "failing"
    title: str
    text: str
    action: str
    command: str = ""  # a command to run, shown after the action
    # The server's own words (they may name recipients): shown only to users who may see the
    # outbox or the SMTP settings.
    detail: str = ""
    note: str = ""
    settings_link: bool = False  # the fix is on Settings -> SMTP


@dataclass(frozen=True)
class Health:
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.problems)


def problems(
    snap: Snapshot, *, queue_delay: float, failed_attempts: int, failing_window: float = 86400
) -> tuple[Problem, ...]:
    """What the banner says, from a snapshot (pure)."""
    found: list[Problem] = []
    if not snap.worker_alive:
        if snap.last_worker_seen is None:
            since = "No delivery worker has run yet"
        elif snap.last_worker_stopped:
            since = "No delivery worker is running: the last one stopped at " + _at(
                snap.last_worker_seen
            )
        else:
            since = f"No delivery worker has been seen since {_at(snap.last_worker_seen)}"
        found.append(
            Problem(
                "no-worker",
                since + ".",
                "E-mail (invitations, notifications) waits in the outbox and nothing is sent"
                + (f": the oldest since {_at(snap.oldest_due)}." if snap.oldest_due else "."),
                "Start a worker:",
                command=START_COMMAND,
                note="(scripts/run starts one, and starts it again when it dies.)",
            )
        )
    holding = snap.breaker_until is not None and snap.breaker_until > snap.now
    if snap.worker_alive and snap.oldest_due is not None and not holding:
        waited = (snap.now - snap.oldest_due).total_seconds()
        if waited > queue_delay:
            found.append(
                Problem(
                    "mail-waiting",
                    f"Mail has waited {_duration(waited)} for a worker.",
                    f"The oldest queued message was due at {_at(snap.oldest_due)}.",
                    "Check that the workers are not stuck (their log, and the workers on "
                    "Home); add a worker if they cannot keep up.",
                )
            )
    if holding:
        found.append(
            Problem(
                "failing",
                "The SMTP server cannot be reached.",
                f"Mail waits until {_at(snap.breaker_until)}, then tries again.",
                "Check Settings → SMTP (Send test e-mail shows each step); saving the "
                "settings tries again at once.",
                detail=snap.breaker_reason,
                settings_link=True,
            )
        )
    elif _all_failing(snap, failed_attempts, failing_window):
        newest = snap.recent_outcomes[0]
        found.append(
            Problem(
                "failing",
                f"The last {failed_attempts} delivery attempts failed.",
                "Mail is not being accepted.",
                "Check the replies in the Outbox and Settings → SMTP (Send test e-mail).",
                detail=newest[2],
                settings_link=True,
            )
        )
    return tuple(found)


def _all_failing(snap: Snapshot, n: int, window: float) -> bool:
    recent = snap.recent_outcomes[:n]
    return (
        n > 0
        and len(recent) == n
        and all(outcome in FAILING for outcome, _, _ in recent)
        and (snap.now - recent[0][1]).total_seconds() <= window
    )


def _at(moment: datetime.datetime) -> str:
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()}"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} minutes"
    hours = minutes // 60
    return f"{hours} hours" if hours < 48 else f"{hours // 24} days"


# Reading (I/O).


def worker_alive(now: datetime.datetime) -> bool:
    cutoff = now - datetime.timedelta(seconds=settings.HEALTH_WORKER_TIMEOUT_SECONDS)
    return WorkerHeartbeat.objects.filter(stopped_at__isnull=True, last_seen__gte=cutoff).exists()


def oldest_due(now: datetime.datetime) -> datetime.datetime | None:
    """The queued message due the longest (the outbox_due index: status, next_attempt_at)."""
    return (
        OutboundEmail.objects.filter(status=Status.QUEUED, next_attempt_at__lte=now)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )


def snapshot(now: datetime.datetime | None = None) -> Snapshot:
    now = now or timezone.now()
    alive = worker_alive(now)
    last_seen, last_stopped = None, False
    if not alive:
        latest = WorkerHeartbeat.objects.values_list("last_seen", "stopped_at").first()
        if latest is not None:
            last_seen, last_stopped = latest[0], latest[1] is not None
    breaker = Breaker.objects.filter(pk=1).values_list("until", "reason").first()
    attempts = DeliveryAttempt.objects.order_by("-id").values_list(
        "outcome", "at", "reply", "advice"
    )
    recent = tuple(
        (
            outcome,
            at,
            f"{advice} (Server replied: {reply})" if advice and reply else advice or reply,
        )
        for outcome, at, reply, advice in attempts[: settings.HEALTH_FAILED_ATTEMPTS]
    )
    return Snapshot(
        now=now,
        worker_alive=alive,
        last_worker_seen=last_seen,
        last_worker_stopped=last_stopped,
        oldest_due=oldest_due(now),
        breaker_until=breaker[0] if breaker else None,
        breaker_reason=breaker[1] if breaker else "",
        recent_outcomes=recent,
    )


def current_health() -> Health:
    snap = snapshot()
    return Health(
        problems(
            snap,
            queue_delay=settings.HEALTH_QUEUE_DELAY_SECONDS,
            failed_attempts=settings.HEALTH_FAILED_ATTEMPTS,
        )
    )


_cache_lock = threading.Lock()
_cached: tuple[float, Health] | None = None


def cached_health() -> Health:
    """current_health(), computed at most once per HEALTH_CACHE_SECONDS in this process: every
    console page shows it, and it need not be fresher than the workers' heartbeats."""
    global _cached
    ttl = settings.HEALTH_CACHE_SECONDS
    with _cache_lock:
        # A negative age: computed under another clock (one stepped back, or a test's frozen
        # time). Such an entry is stale whatever its age says.
        if _cached is not None and 0 <= time.monotonic() - _cached[0] < ttl:
            return _cached[1]
    health = current_health()
    with _cache_lock:
        _cached = (time.monotonic(), health)
    return health


def forget_cached() -> None:
    global _cached
    with _cache_lock:
        _cached = None
