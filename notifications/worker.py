"""Each worker process delivers the outbox from a thread of its own: the delivery loop.

The database is the source of truth. The loop drains whatever is due, then sleeps until the
next retry is due or a lease runs out, and never longer than OUTBOX_SWEEP_SECONDS. So while
one worker lives, no due message waits longer than that for a worker that is free, whatever
happened to the task queue (jobs lost, Redis flushed, a worker killed at any instant). A
delivery task is only a doorbell that wakes the loop at once for new mail. A second thread
renews this process's claims every third of the lease, so a send slower than the lease keeps
its message, and a dead process's messages are free again one lease after its death. The
same thread records the worker's heartbeat (health/), which the console and /readyz read.

`manage.py outbox_worker` runs the loop beside the task worker of TASKS_BACKEND (db_worker, or
an RQ SimpleWorker) and handles the stop signals: the first SIGTERM or SIGINT finishes the
message in flight, releases every other claimed message at once, and exits.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Min
from django.utils import timezone

from .delivery import WORKER_ID, Courier, breaker, release_claims, renew_claims
from .models import OutboundEmail, Status

if TYPE_CHECKING:
    from health.heartbeat import Heartbeat

log = logging.getLogger(__name__)

# One drain at a time per process: the loop and a task run inline share one SMTP connection.
_drain_lock = threading.Lock()
_courier: Courier | None = None
_loop: DeliveryLoop | None = None
_next_credential_check = 0.0  # monotonic time of this process's next expiry check

LEASE_MARGIN = 0.1  # seconds past a lease's end before its message is claimable (strict <)
IDLE_FLOOR = 1.0  # after a drain that found nothing, wait at least this long


def courier() -> Courier:
    global _courier
    if _courier is None:
        _courier = Courier()
    return _courier


def seconds_to_wait(
    now: datetime.datetime,
    next_due: datetime.datetime | None,
    lease_ends: datetime.datetime | None,
    interval: float,
    found_nothing: bool,
) -> float:
    """How long the loop sleeps: until the next retry is due or the next lease runs out, never
    longer than the sweep interval. After a drain that found nothing, a message that looks
    due but cannot be claimed (another worker's lock, a clock ahead) is not polled in a spin."""
    moments = [t for t in (next_due, lease_ends and lease_ends + _margin()) if t is not None]
    wait = interval
    if moments:
        wait = min(interval, max(0.0, (min(moments) - now).total_seconds()))
    if found_nothing:
        wait = max(wait, min(IDLE_FLOOR, interval))
    return wait


def _margin() -> datetime.timedelta:
    return datetime.timedelta(seconds=LEASE_MARGIN)


def next_moments() -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """When the next queued message is due (not before the breaker lets the queue go), and
    when the next claim runs out."""
    queued = OutboundEmail.objects.filter(status=Status.QUEUED).aggregate(t=Min("next_attempt_at"))
    leases = OutboundEmail.objects.filter(status=Status.SENDING).aggregate(t=Min("lease_until"))
    next_due = queued["t"]
    state = breaker()
    if next_due is not None and state is not None and state.until and next_due < state.until:
        next_due = state.until
    return next_due, leases["t"]


def sweep() -> int:
    """Deliver every message due now, and those whose lease ran out. Returns how many were
    handled; 0 at once when this process is already draining (that drain will loop)."""
    if not _drain_lock.acquire(blocking=False):
        return 0
    try:
        check_credentials_hourly()
        handled = courier().drain()
    finally:
        _drain_lock.release()
    if handled:
        log.info("Outbox: handled %d message(s): %s", handled, dict(courier().counts))
    return handled


def check_credentials_hourly() -> None:
    """Now and then, announce credentials that expire soon; each notice is raised once."""
    from .credential_notices import announce_expiring_credentials

    global _next_credential_check
    if time.monotonic() < _next_credential_check:
        return
    _next_credential_check = time.monotonic() + 3600
    try:
        announce_expiring_credentials()
    except Exception:  # a notice must never stop delivery
        log.exception("Checking SMTP credentials for expiry failed")


class DeliveryLoop:
    """The thread that delivers: woken by a task for new mail, by its own clock otherwise."""

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval if interval is not None else settings.OUTBOX_SWEEP_SECONDS
        self.doorbell = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="outbox-delivery", daemon=True)
        self.heartbeat = threading.Thread(target=self.renew, name="outbox-lease", daemon=True)
        self.next_housekeeping = 0.0
        self.stopped_at: float | None = None  # monotonic time of the first stop request
        self.activity = "starting"  # what the heartbeat says this worker is doing
        self.finished = threading.Event()  # finish() wrote the last heartbeat: no more
        self._pulse: Heartbeat | None = None

    def start(self) -> None:
        global _loop
        _loop = self
        self.thread.start()
        self.heartbeat.start()

    def wake(self) -> None:
        self.doorbell.set()

    def stop(self) -> None:
        """Finish the message in flight, release the rest of the batch, and leave the loop."""
        if self.stopping.is_set():
            return
        self.stopped_at = time.monotonic()
        log.info("Outbox: stopping; the message in flight is finished, the rest released")
        self.stopping.set()
        courier().request_stop()
        self.doorbell.set()

    def join(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                wait = self.interval
                try:
                    close_old_connections()
                    self.doorbell.clear()
                    self.activity = "delivering"
                    handled = sweep()
                    self.activity = "idle"
                    if self.stopping.is_set():
                        break
                    self.housekeeping()
                    next_due, lease_ends = next_moments()
                    wait = seconds_to_wait(
                        timezone.now(), next_due, lease_ends, self.interval, handled == 0
                    )
                except Exception:  # the database is away, say: try again at the next sweep
                    log.exception("Outbox: the delivery loop failed; trying again")
                self.doorbell.wait(wait)
        finally:
            courier().close()
            connection.close()

    def renew(self) -> None:
        """While this process lives, its claims live: renewed every third of the lease, apart
        from sending, so one send may take longer than the lease without another worker
        taking its message. The lease can then be short, and a dead worker's mail goes out
        again soon after its death. The same thread beats this worker's heartbeat every
        HEALTH_HEARTBEAT_SECONDS, so a slow send never makes a live worker look dead."""
        every = settings.OUTBOX_LEASE_SECONDS / 3
        tick = min(every, settings.HEALTH_HEARTBEAT_SECONDS)
        next_renewal = time.monotonic() + every
        try:
            self.beat()  # at once: the console sees this worker from its first second
            while True:
                if self.stopping.wait(tick):  # hold on while the message in flight finishes
                    self.thread.join(tick)
                    if not self.thread.is_alive():
                        return
                close_old_connections()
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + every
                    try:
                        renew_claims(courier().worker)
                    except Exception as error:  # the database is away: the lease may run out
                        log.warning("Outbox: could not renew this worker's claims: %s", error)
                self.beat()
        finally:
            connection.close()

    def beat(self, *, stopped: bool = False) -> None:
        """Record this worker's heartbeat, and flush what its deliveries came to (counted in
        memory by deliverystats) for the console and /metrics. Never stops delivery."""
        from health.heartbeat import Heartbeat

        if self.finished.is_set():
            return  # finish() wrote the last one; a later beat would look alive again
        if self._pulse is None:
            self._pulse = Heartbeat(courier().worker)
        doing = "stopping" if self.stopping.is_set() and not stopped else self.activity
        try:
            self._pulse.beat("stopped" if stopped else doing, courier().counts, stopped=stopped)
        except Exception as error:  # the database is away: the next beat tries again
            log.warning("Outbox: could not record this worker's heartbeat: %s", error)
        if stopped:
            self.finished.set()

    def housekeeping(self) -> None:
        """Tidy the task records now and then; a failure there never holds up delivery."""
        if time.monotonic() < self.next_housekeeping:
            return
        self.next_housekeeping = time.monotonic() + self.interval
        from .taskrecords import tidy_task_records

        try:
            tidy_task_records()
        except Exception as error:  # e.g. Redis away: the next round tries again
            log.warning("Task records: tidying failed: %s", error)
        from .retention import apply_if_due

        try:
            apply_if_due()
        except Exception:  # retention must never hold up delivery
            log.exception("Retention: applying the retention policy failed")
        from gatewaymgr.invitations import resume_stalled_batches

        try:  # a bulk invitation whose worker died goes on (gatewaymgr/invitations.py)
            resume_stalled_batches()
        except Exception:
            log.exception("Invitations: resuming stalled batches failed")


def running_loop() -> DeliveryLoop | None:
    """This process's delivery loop, when it has one (manage.py outbox_worker)."""
    return _loop


def chain_stop_signals(loop: DeliveryLoop) -> None:
    """On SIGTERM and SIGINT, stop the loop first, then run the task worker's own handler. A
    repeat within a second is the same stop (Ctrl+C in scripts/run reaches the worker, then the
    script's SIGTERM): only a later one is a second signal, which exits at once."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(signum, frame, previous=previous) -> None:
            if loop.stopped_at is not None and time.monotonic() - loop.stopped_at < 1:
                return
            first = not loop.stopping.is_set()
            loop.stop()
            if callable(previous):
                previous(signum, frame)
            elif not first and previous == signal.SIG_DFL:
                raise SystemExit(1)  # the task worker had no handler: a second signal exits

        signal.signal(signum, handler)


def finish(loop: DeliveryLoop) -> None:
    """After the task worker stopped: wait for the loop's message in flight, then give back
    anything this process still holds. If a second signal cuts the wait short, the message in
    flight keeps its claim until its lease runs out: it may then go twice, never fail."""
    loop.stop()
    loop.join()
    released = release_claims(courier().worker)
    if released:
        log.info("Outbox: released %d message(s) on stop", released)
    loop.beat(stopped=True)  # the console shows it stopped, not gone


def local_process_alive(worker_id: str) -> bool | None:
    """Whether a worker named host:pid is alive: None when it ran on another machine."""
    host, _, pid = worker_id.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def task_worker_id() -> str:
    return WORKER_ID[-64:]  # db_worker takes at most 64 characters
