"""Delivering the outbox: claim due messages, send them over one transport, record results.

Workers claim in batches under a lease, so two workers never send the same message at the
same time (SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite serializes writers).
A claim is renewed while its batch is worked on (every third of the lease), and right before
each send a conditional UPDATE checks that the claim is still ours and renews it; a message
whose claim was lost is left to its new holder. That check rides in the transaction that
records the previous message, so it costs no commit of its own.

Each result is committed right after the server's reply: a duplicate is possible only when
a worker dies between the server's 250 and that commit. Messages of a worker that died are
claimed again once its lease runs out; a worker that is stopped or interrupted gives its
messages back at once. The check of the next claim rides in the same transaction.

A message every recipient got (the common case) is committed as its "sent" attempt alone
(commit_sent): an appended row, where changing the outbox row also changes its indexes, its
status count and its body, which cost most of a commit. That attempt is the result: the rows
are marked Sent together afterwards (settle_sent: OUTBOX_SETTLE_EVERY deliveries or
OUTBOX_SETTLE_SECONDS, and each batch's end), and every path that could send a message again
first settles the ones whose acceptance is committed (settle_accepted: a claim of expired
leases, a worker giving its messages back, an outage holding the queue). The UPDATE that marks
a message Sent also drops its body (a database trigger, notifications.triggers). Any other
result (refused recipients, a retry, a failure) is committed with its row at once
(commit_result): one statement on PostgreSQL, one transaction on SQLite.

With a server that offers PIPELINING, the next message's MAIL, RCPT and DATA travel with the
previous message's final dot (RFC 2920), so a message costs one round trip; its content goes
only after the previous result is committed and its claim checked. If that claim was lost
meanwhile, nothing of it is sent: the transport drops the connection with its envelope.

Only an SMTP 5xx reply to a message (or a problem of the message itself, such as a body no
key can read) fails it. A server that cannot be reached holds the whole queue back (Breaker)
and charges no message an attempt.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Greatest
from django.utils import timezone

from gatewaymgr.untrusted import printable
from smtpsettings import store
from smtpsettings.backends import transport_for
from smtpsettings.problems import SmtpProblem
from smtpsettings.transport import Outgoing, SmtpTransport

from . import deliverystats, sqlite_writers
from .models import BodyUnavailable, Breaker, DeliveryAttempt, OutboundEmail, Status
from .policy import (
    RetryPolicy,
    answered,
    breaker_delay,
    concerns_connection,
    give_up,
    interrupted,
    pending_addresses,
    record_problem,
    record_refusals,
    settle,
)

log = logging.getLogger(__name__)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def retry_policy() -> RetryPolicy:
    return RetryPolicy(
        first_delay=settings.OUTBOX_RETRY_FIRST_DELAY,
        window=datetime.timedelta(hours=settings.OUTBOX_RETRY_HOURS),
    )


def lease_end() -> datetime.datetime:
    return timezone.now() + datetime.timedelta(seconds=settings.OUTBOX_LEASE_SECONDS)


def due(cutoff: datetime.datetime, now: datetime.datetime):
    """Messages a worker may claim: queued and due by `cutoff`, or held by a worker whose
    lease has run out, unless that worker committed its acceptance (it is sent: a claim that
    looked before that commit finds it locked, one that looks after finds the attempt)."""
    return OutboundEmail.objects.filter(
        Q(status=Status.QUEUED, next_attempt_at__lte=cutoff)
        | (Q(status=Status.SENDING, lease_until__lt=now) & ~Exists(_accepted_attempt()))
    )


def _accepted_attempt():
    """The committed acceptance of an outbox row (see commit_sent), by its holder."""
    return DeliveryAttempt.objects.filter(
        email=OuterRef("pk"), outcome="sent", worker=OuterRef("claimed_by")
    )


def claim(worker: str, size: int, cutoff: datetime.datetime | None = None) -> list[OutboundEmail]:
    """Take up to `size` due messages for `worker`. No attempt is charged here but right
    before each send (still_mine), so a worker killed with a batch charges only the message it
    was sending (which is not tried forever if it is what kills workers)."""
    now = timezone.now()
    with sqlite_writers.turn(), transaction.atomic():
        settle_accepted(OutboundEmail.objects.filter(lease_until__lt=now))
        candidates = due(cutoff or now, now).order_by("next_attempt_at", "id")
        if connection.features.has_select_for_update_skip_locked:
            candidates = candidates.select_for_update(skip_locked=True)
        ids = list(candidates.values_list("id", flat=True)[:size])
        if not ids:
            return []
        OutboundEmail.objects.filter(id__in=ids).update(
            status=Status.SENDING,
            claimed_by=worker,
            lease_until=lease_end(),
        )
    # The bodies come along (a join): one query for the batch, none per message.
    return list(
        OutboundEmail.objects.filter(id__in=ids, claimed_by=worker)
        .select_related("body")
        .order_by("id")
    )


def held_by(worker: str):
    return OutboundEmail.objects.filter(status=Status.SENDING, claimed_by=worker)


def still_mine(worker: str, pk: int) -> bool:
    """Right before message `pk` is sent, atomically: is its claim still `worker`'s? If so the
    claim is renewed, so nobody can take it during the send, and the attempt is charged."""
    db = connections[DEFAULT_DB_ALIAS]
    with db.cursor() as cursor:
        cursor.execute(_renew_sql(db), _renew_params(db, worker, pk))
        return cursor.rowcount == 1


# What runs once per message is plain SQL, each statement built once per database: building
# the ORM's statements cost more than running them. Values other than text, whole numbers and
# NULL go through their field's own conversion for the database (JSON, dates).

_HELD = "WHERE id = %s AND claimed_by = %s AND status = %s"  # the claim holder's row alone
_built: dict[tuple, str] = {}


def _sql(db: BaseDatabaseWrapper, key: tuple, build: Callable[[Callable], str]) -> str:
    """The statement `build` makes with the database's quote_name, built once per database."""
    sql = _built.get((db.vendor, *key))
    if sql is None:
        sql = _built[(db.vendor, *key)] = build(db.ops.quote_name)
    return sql


def _renew_sql(db: BaseDatabaseWrapper) -> str:
    """still_mine()'s UPDATE: the claim renewed and the attempt charged, if it is held."""
    return _sql(
        db,
        ("renew",),
        lambda q: (
            f"UPDATE {q(OutboundEmail._meta.db_table)}"
            f" SET lease_until = %s, attempts = attempts + 1 {_HELD}"
        ),
    )


_AS_IS = {"CharField", "TextField", "PositiveIntegerField", "IntegerField", "ForeignKey"}


def _prepared(field, value, db: BaseDatabaseWrapper):
    if value is None or (type(value) in (str, int) and _as_is(field)):
        return value
    return field.get_db_prep_save(value, db)


@functools.cache
def _as_is(field) -> bool:
    return field.get_internal_type() in _AS_IS


def _renew_params(db: BaseDatabaseWrapper, worker: str, pk: int | None) -> list:
    lease = OutboundEmail._meta.get_field("lease_until").get_db_prep_save(lease_end(), db)
    return [lease, pk, worker, Status.SENDING.value]


def _record_sql(db: BaseDatabaseWrapper, changes: dict) -> str:
    """held_by(worker).filter(pk=pk).update(**changes)."""
    fields = [OutboundEmail._meta.get_field(name) for name in changes]
    return _sql(
        db,
        ("record", *changes),
        lambda q: (
            f"UPDATE {q(OutboundEmail._meta.db_table)} SET "
            + ", ".join(f"{q(f.column)} = %s" for f in fields)
            + f" {_HELD}"
        ),
    )


def _record_params(db: BaseDatabaseWrapper, worker: str, pk: int, changes: dict) -> list:
    get = OutboundEmail._meta.get_field
    values = [_prepared(get(name), value, db) for name, value in changes.items()]
    return [*values, pk, worker, Status.SENDING.value]


@functools.cache
def _attempt_fields() -> list:
    opts = DeliveryAttempt._meta
    return [f for f in opts.concrete_fields if f is not opts.pk]


def _attempt_sql(db: BaseDatabaseWrapper, select_from: str = "") -> str:
    """A new DeliveryAttempt row: VALUES, or SELECTed from `select_from` (one row or none)."""
    columns = [f.column for f in _attempt_fields()]
    placeholders = ", ".join(["%s"] * len(columns))
    source = (
        f"SELECT {placeholders} FROM {select_from}" if select_from else f"VALUES ({placeholders})"
    )
    return _sql(
        db,
        ("attempt", select_from),
        lambda q: (
            f"INSERT INTO {q(DeliveryAttempt._meta.db_table)}"
            f" ({', '.join(q(c) for c in columns)}) {source}"
        ),
    )


def _attempt_params(db: BaseDatabaseWrapper, values: dict) -> list:
    """`values` by attribute name (email_id, at, ...); a field not given takes its default."""
    return [
        _prepared(f, values[f.attname] if f.attname in values else f.get_default(), db)
        for f in _attempt_fields()
    ]


def commit_result(
    worker: str, pk: int, changes: dict, attempt: dict, check: int | None
) -> tuple[bool, bool]:
    """Commit what a send came to, if `worker` still holds message `pk`: `changes` to it, and
    a DeliveryAttempt of `attempt` (values by attribute name) added; and in the same
    transaction check (and renew, and charge) the claim on message `check`, the next to send,
    as still_mine() does. Returns whether the result was recorded, and whether `check` is
    still ours.

    On PostgreSQL this is one statement run on its own, so its own transaction: one round trip
    to the server, with no BEGIN and COMMIT to wait for. Elsewhere (SQLite, in process) three
    statements in one transaction."""
    db = connections[DEFAULT_DB_ALIAS]
    record = _record_params(db, worker, pk, changes)
    renew = _renew_params(db, worker, check)
    add = _attempt_params(db, {"email_id": pk, **attempt})
    if db.vendor == "postgresql":
        recorded = f"{_record_sql(db, changes)} RETURNING id"
        return _postgresql_commit(db, ("commit", *changes), recorded, [*record, *add, *renew])
    # The attempt only if the row was recorded: changes() counts what the UPDATE before it did.
    statements = [
        (_record_sql(db, changes), record),
        (_attempt_sql(db, "(SELECT changes() AS n) WHERE n = 1"), add),
    ]
    if check is not None:
        statements.append((_renew_sql(db), renew))
    counts = _sqlite_transaction(db, statements)
    return counts[0] == 1, check is not None and counts[2] == 1


def commit_sent(worker: str, pk: int, attempt: dict, check: int | None) -> tuple[bool, bool]:
    """The common case, accepted for every recipient: commit only the attempt that says so
    (if `worker` still holds message `pk`) and, in the same transaction, the check of `check`
    as commit_result() does. That committed attempt is the message's result: from then on it
    is sent, whatever happens to this worker. Its row still says Sending until settle_sent()
    settles it with others in one transaction (or settle_accepted(), for a worker that died
    first); every path that could send it again settles it first. A row of the outbox costs
    its indexes, status counts and body in every commit that changes it; an attempt appended
    costs a page or two, so a message costs one small commit.

    Returns whether the attempt was recorded, and whether `check` is still ours."""
    db = connections[DEFAULT_DB_ALIAS]
    add = _attempt_params(db, {"email_id": pk, **attempt})
    held = [pk, worker, Status.SENDING.value]
    renew = _renew_params(db, worker, check)
    if db.vendor == "postgresql":
        # The row is locked while the attempt is added, so a claim of its expired lease either
        # waits and then sees the attempt (due() leaves it out), or took it first (and the
        # attempt is not added: the message is no longer ours, as in commit_result()).
        held_row = f"SELECT id FROM {_outbox(db)} {_HELD} FOR UPDATE"
        return _postgresql_commit(db, ("sent",), held_row, [*held, *add, *renew])
    statements = [(_attempt_sql(db, select_from=f"{_outbox(db)} {_HELD}"), [*add, *held])]
    if check is not None:
        statements.append((_renew_sql(db), renew))
    counts = _sqlite_transaction(db, statements)
    return counts[0] == 1, check is not None and counts[1] == 1


def _postgresql_commit(
    db: BaseDatabaseWrapper, key: tuple, recorded: str, params: list
) -> tuple[bool, bool]:
    """One statement, so its own transaction (one round trip, no BEGIN or COMMIT to wait for):
    `recorded`, which yields the message's id if it is still ours, the attempt added for it,
    and the check (renewal) of the next claim. Whether it was recorded, and the next is ours."""
    sql = _sql(
        db,
        key,
        lambda q: (
            f"WITH recorded AS ({recorded}),"
            f" attempt AS ({_attempt_sql(db, select_from='recorded')}),"
            f" following AS ({_renew_sql(db)} RETURNING id)"
            " SELECT (SELECT count(*) FROM recorded), (SELECT count(*) FROM following)"
        ),
    )
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        done, following = cursor.fetchone()
    return done == 1, following == 1


def _sqlite_transaction(db: BaseDatabaseWrapper, statements: list[tuple[str, list]]) -> list[int]:
    """Run `statements` in one transaction on SQLite; how many rows each one changed. Its own
    transaction goes straight to the driver, in the writers' queue: Django's cursor and
    transaction handling cost more than these statements, which run once per message. Inside
    the caller's transaction (a test, a task run inline), they join it."""
    if db.in_atomic_block:
        with db.cursor() as cursor:
            counts = []
            for sql, params in statements:
                cursor.execute(sql, params)
                counts.append(cursor.rowcount)
            return counts
    db.ensure_connection()
    raw = db.connection
    counts = []
    with sqlite_writers.queue(), db.wrap_database_errors:
        raw.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                counts.append(raw.execute(_qmarks(db, sql), params).rowcount)
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise
    return counts


def _qmarks(db: BaseDatabaseWrapper, sql: str) -> str:
    """`sql` with the driver's own placeholders (SQLite's "?" for "%s")."""
    return _sql(db, ("qmarks", sql), lambda q: sql.replace("%s", "?"))


def _outbox(db: BaseDatabaseWrapper) -> str:
    return db.ops.quote_name(OutboundEmail._meta.db_table)


@dataclass(frozen=True)
class Accepted:
    """A message whose acceptance is committed (commit_sent) and whose row is not settled."""

    pk: int
    recipients: list
    at: datetime.datetime


def settled_changes(recipients: list, at: datetime.datetime) -> dict:
    """What a message accepted for every pending recipient at `at` becomes."""
    return {
        "recipients": record_refusals(recipients, {}),
        "status": Status.SENT,
        "sent_at": at,
        "claimed_by": "",
        "lease_until": None,
        "last_error": "",
    }


def settle_sent(worker: str, accepted: list[Accepted]) -> None:
    """Settle the rows of messages `worker` committed as accepted: Sent, in one transaction
    (the trigger drops each body with its UPDATE)."""
    if not accepted:
        return
    db = connections[DEFAULT_DB_ALIAS]
    shape = settled_changes([], accepted[0].at)
    sql = _record_sql(db, shape)
    rows = [_record_params(db, worker, a.pk, settled_changes(a.recipients, a.at)) for a in accepted]
    with sqlite_writers.turn(), transaction.atomic(using=db.alias), db.cursor() as cursor:
        cursor.executemany(sql, rows)


def settle_accepted(emails) -> int:
    """Settle the rows among `emails` (Sending) whose acceptance their holder committed but
    did not settle (it died, or could not reach the database): they are sent, never to be
    claimed or released again. Returns how many. Run before a claim takes expired leases and
    before a worker gives its messages back."""
    rows = list(
        emails.filter(status=Status.SENDING)
        .filter(Exists(_accepted_attempt()))
        .values_list("pk", "claimed_by", "recipients")
    )
    settled = 0
    for pk, holder, recipients in rows:
        at = (
            DeliveryAttempt.objects.filter(email_id=pk, outcome="sent", worker=holder)
            .order_by("-at")
            .values_list("at", flat=True)
            .first()
        )
        changes = settled_changes(recipients, at)
        settled += OutboundEmail.objects.filter(
            pk=pk, claimed_by=holder, status=Status.SENDING
        ).update(**changes)
    return settled


def uncharge(worker: str, pk: int) -> None:
    """Message `pk` was charged an attempt but not sent to any server (a stop, an outage)."""
    held_by(worker).filter(pk=pk).update(attempts=Greatest(F("attempts") - 1, 0))


def renew_claims(worker: str) -> int:
    """Extend the lease of every message `worker` holds (the rest of its batch)."""
    return held_by(worker).update(lease_until=lease_end())


def release_claims(worker: str) -> int:
    """Give back every message `worker` holds, at once: queued and due, held by nobody, for
    another worker to take. Their attempts stay as they were; those whose acceptance was
    committed are settled as sent instead. Returns how many were given back."""
    with transaction.atomic():
        settle_accepted(held_by(worker))
        return held_by(worker).update(status=Status.QUEUED, claimed_by="", lease_until=None)


def put_off(worker: str, email: OutboundEmail, error: BaseException) -> None:
    """`email`'s send was ended by an exception that is no reply of the server (a job
    system's timeout, a bug): back to the queue after its backoff, the attempt counted."""
    now = timezone.now()
    when = now + datetime.timedelta(seconds=retry_policy().delay(email.attempts))
    said = printable(f"{type(error).__name__}: {error}")
    reason = f"The send was interrupted ({said}); it will be retried."
    with transaction.atomic():
        if (
            held_by(worker)
            .filter(pk=email.pk)
            .update(
                status=Status.QUEUED,
                claimed_by="",
                lease_until=None,
                next_attempt_at=when,
                last_error=reason,
            )
        ):
            DeliveryAttempt.objects.create(
                email=email, at=now, worker=worker, outcome="retry", step="data", advice=reason
            )


def breaker() -> Breaker | None:
    return Breaker.objects.filter(pk=1).first()


def hold_queue(worker: str, problem: SmtpProblem, in_flight: int | None = None) -> int:
    """The server cannot be reached: trip the breaker, give back `worker`'s messages with no
    attempt charged (the attempt of `in_flight`, whose send met the problem, is given back;
    those past their retry window fail with the problem), and make the whole queue wait until
    the breaker's time. Returns how many messages were held back."""
    now = timezone.now()
    reason = str(problem)
    policy = retry_policy()
    with transaction.atomic():
        state, _ = Breaker.objects.select_for_update().get_or_create(pk=1)
        if state.until is None or state.until <= now:  # not tripped meanwhile by another worker
            state.failures += 1
            delay = breaker_delay(settings.OUTBOX_RETRY_FIRST_DELAY, state.failures)
            state.until = now + datetime.timedelta(seconds=delay)
        state.reason = reason
        state.save()
        settle_accepted(held_by(worker))
        held = list(held_by(worker).select_for_update())
        attempts = []
        for email in held:
            if policy.expired(email.created_at, now):  # bounced, with the reason
                recipients = give_up(record_problem(email.recipients, problem))
                status = settle(recipients)
                # Sent (to some): the trigger drops the body with this UPDATE.
                done = {"sent_at": now} if status == Status.SENT else {}
                OutboundEmail.objects.filter(pk=email.pk).update(
                    status=status,
                    recipients=recipients,
                    claimed_by="",
                    lease_until=None,
                    last_error=reason,
                    **done,
                )
                outcome = "failed" if status == Status.FAILED else "partly sent"
            else:
                outcome = "retry"
            deliverystats.recorded(email, outcome, problem, now)  # counted once committed
            attempts.append(
                DeliveryAttempt(
                    email=email,
                    at=now,
                    worker=worker,
                    outcome=outcome,
                    step=problem.step,
                    reply=problem.server_reply,
                    advice=problem.advice,
                )
            )
        DeliveryAttempt.objects.bulk_create(attempts)
        if in_flight is not None:
            uncharge(worker, in_flight)
        held_back = held_by(worker).update(
            status=Status.QUEUED,
            claimed_by="",
            lease_until=None,
            next_attempt_at=state.until,
            last_error=reason,
        )
        # Everyone else waits for the same time, with the same reason shown.
        held_back += OutboundEmail.objects.filter(
            status=Status.QUEUED, next_attempt_at__lt=state.until
        ).update(next_attempt_at=state.until, last_error=reason)
    return held_back


def reset_breaker() -> None:
    Breaker.objects.filter(pk=1).exclude(failures=0, until=None).update(failures=0, until=None)


@dataclass
class Courier:
    """A worker's connection to the SMTP server, kept across batches and tasks, so the
    help page's ping_threshold and restart_threshold apply to the outbox."""

    worker: str = WORKER_ID
    transport: SmtpTransport | None = None
    settings_version: object = None
    counts: Counter = field(default_factory=Counter)  # outcomes, for the worker's log
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    # The server's answer to a send not yet committed: recorded even if interrupted.
    _unrecorded: tuple | None = field(default=None, repr=False)
    _probing: bool = field(default=False, repr=False)  # the breaker had tripped before
    _in_flight: OutboundEmail | None = field(default=None, repr=False)  # being sent
    _armed: int | None = field(default=None, repr=False)  # checked and charged, not yet sent
    # The next message as the transport sends it, read and decrypted before this one's final
    # dot so that its envelope travels with that dot (PIPELINING): (its id, the Outgoing).
    _following: tuple[int, Outgoing] | None = field(default=None, repr=False)
    # Messages whose acceptance is committed (commit_sent) and rows not yet settled.
    _accepted: list[Accepted] = field(default_factory=list, repr=False)
    _accepted_since: float = field(default=0.0, repr=False)  # monotonic, the oldest of them

    def request_stop(self) -> None:
        """Stop soon; safe from another thread or a signal handler. The drain finishes the
        message in flight, gives back every other message this worker holds at once, closes
        the connection and returns; later drains return 0 at once."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

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

    def abort(self) -> None:
        """Drop the connection without a word: its state is unknown."""
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def drain(
        self, batch_size: int | None = None, on_claim: Callable[[], None] | None = None
    ) -> int:
        """Deliver every message that was due when the drain began, batch after batch.
        Returns how many were handled (delivered, failed, retried or held back). A retry
        scheduled meanwhile waits for its time. `on_claim` runs once, at the first claim.

        An exception of any kind (a job system's timeout, SystemExit, KeyboardInterrupt, a
        bug) drops the connection, gives back every message this worker holds (see
        _give_back), and is raised again. Nothing is marked failed for it."""
        try:
            return self._drain(batch_size or settings.OUTBOX_BATCH_SIZE, on_claim)
        except BaseException as error:
            self.abort()
            self._give_back(error)
            raise
        finally:
            self._in_flight = self._armed = self._following = None

    def _drain(self, batch_size: int, on_claim: Callable[[], None] | None) -> int:
        started = timezone.now()
        state = breaker()
        if self.stopping or (state is not None and state.until and state.until > started):
            return 0  # stopping, or the server could not be reached: the queue waits as a whole
        self._probing = state is not None and state.failures > 0
        handled = 0
        first = True
        while not self.stopping and (batch := claim(self.worker, batch_size, started)):
            if on_claim is not None and first:
                on_claim()
            first = False
            done, problem = self._deliver_batch(batch)
            self.settle()
            handled += done
            if problem is not None:  # do not knock on the same closed door for every message
                in_flight = self._in_flight.pk if self._in_flight is not None else None
                return handled + hold_queue(self.worker, problem, in_flight)
        if self.stopping:
            self._give_back()
            self.close()
        return handled

    def _deliver_batch(self, batch: list[OutboundEmail]) -> tuple[int, SmtpProblem | None]:
        """Send what is still ours of `batch`. Returns how many were handled, and the problem
        with the connection that ended the batch, if one did."""
        try:
            transport = self.transport_for_current_settings()
        except SmtpProblem as problem:  # settings incomplete or password unreadable
            return 0, problem
        renewed = time.monotonic()
        mine = False  # checked yet? The first of a batch is checked on its own.
        done = 0
        for index, email in enumerate(batch):
            if self.stopping:
                break
            if time.monotonic() - renewed > settings.OUTBOX_LEASE_SECONDS / 3:
                renew_claims(self.worker)  # the rest of the batch stays ours
                renewed = time.monotonic()
            if not mine and not still_mine(self.worker, email.pk):
                continue  # another worker holds it now: it is theirs to send
            email.attempts += 1  # as still_mine() charged it
            self._armed = email.pk
            following = batch[index + 1] if index + 1 < len(batch) else None
            problem, mine = self.deliver(transport, email, check=following)
            if problem is not None and concerns_connection(problem):
                return done, problem  # _in_flight stays set: hold_queue gives its attempt back
            self._in_flight = None
            self._armed = following.pk if mine else None
            done += 1
            if self._probing and answered(problem):
                reset_breaker()  # the server answered: the queue flows again
                self._probing = False
        return done, None

    def _give_back(self, error: BaseException | None = None) -> int:
        """Record a reply that arrived but was not yet committed, then release the rest. A
        send ended by an exception (not a stop: SystemExit, KeyboardInterrupt) keeps its
        attempt and waits its backoff, so a message that always ends so cannot hold the head
        of the queue; it is never failed for it."""
        try:
            if self._unrecorded is not None:
                email, refused = self._unrecorded
                self.record(email, refused=refused)
            elif self._in_flight is not None and isinstance(error, Exception):
                put_off(self.worker, self._in_flight, error)
            elif self._in_flight is not None:
                uncharge(self.worker, self._in_flight.pk)
            if self._armed is not None:
                uncharge(self.worker, self._armed)
            self.settle()
            return release_claims(self.worker)
        except Exception:  # the lease runs out and another worker takes them
            log.exception("Outbox: could not give back the messages of %s", self.worker)
            return 0
        finally:
            self._unrecorded = self._armed = self._in_flight = None
            self._accepted = []  # release_claims() settled them in any case

    def settle(self) -> None:
        """Settle the rows of the messages whose acceptance this worker committed."""
        if self._accepted:
            settle_sent(self.worker, self._accepted)
            self._accepted = []

    def deliver(
        self,
        transport: SmtpTransport,
        email: OutboundEmail,
        *,
        check: OutboundEmail | None = None,
    ) -> tuple[SmtpProblem | None, bool]:
        """Send one message and record the outcome; in the same transaction, check (and renew)
        the claim on `check`, the message to send next. Returns the problem, if any, and
        whether `check` is still ours. A problem with the connection is not recorded here."""
        self._armed = None
        self._in_flight = email
        try:
            outgoing = self._outgoing(email)
        except BodyUnavailable as error:
            # A problem of this message alone: fail it, and the connection serves the rest.
            problem = SmtpProblem("body", str(error), kind="body-unavailable")
            return problem, self.record(email, problem=problem, check=check)
        following = None
        if check is not None:
            with contextlib.suppress(BodyUnavailable):  # it fails in its own turn
                following = self._outgoing(check)
                self._following = (check.pk, following)
        try:
            refused = transport.send(*outgoing, following=following)
        except SmtpProblem as problem:
            if interrupted(problem):  # drain() gives everything back
                raise (problem.__context__ or problem) from None  # as it was raised
            if concerns_connection(problem):
                return problem, False
            return problem, self.record(email, problem=problem, check=check)
        self._unrecorded = (email, refused)
        mine = self.record(email, refused=refused, check=check)
        self._unrecorded = None
        return None, mine

    def _outgoing(self, email: OutboundEmail) -> Outgoing:
        """`email` as the transport sends it (its body decrypted once, even when it was read
        ahead as the message to follow); raises BodyUnavailable."""
        following, self._following = self._following, None
        if following is not None and following[0] == email.pk:
            return following[1]
        recipients = pending_addresses(email.recipients)
        return Outgoing(email.envelope_from, recipients, email.message_bytes())

    def record(
        self,
        email: OutboundEmail,
        *,
        refused: dict[str, tuple[int, str]] | None = None,
        problem: SmtpProblem | None = None,
        check: OutboundEmail | None = None,
    ) -> bool:
        """Commit what the server said about `email`, if it is still ours. Returns whether the
        claim on `check` is still ours (renewing it), checked in the same transaction."""
        now = timezone.now()
        if problem is None and not refused:
            return self._accepted_by_all(email, refused, now, check)
        if problem is None:
            recipients = record_refusals(email.recipients, refused or {})
        else:
            recipients = record_problem(email.recipients, problem)
        status = settle(recipients)
        changes: dict = {"recipients": recipients, "claimed_by": "", "lease_until": None}
        if status == Status.QUEUED:
            when = retry_policy().next_attempt(email.created_at, now, email.attempts)
            if when is None:  # the retry window is over: refuse who is left
                recipients = give_up(recipients)
                status = settle(recipients)
                changes["recipients"] = recipients
            else:
                changes["next_attempt_at"] = when
        changes["status"] = status
        if status == Status.SENT:
            # The trigger drops the body with this UPDATE: nobody needs it again, only the
            # recipient's mailbox keeps it.
            changes["sent_at"] = now
        changes["last_error"] = str(problem) if problem is not None else ""
        outcome = _outcome(status, refused, problem)
        attempt = {
            "at": now,
            "worker": self.worker,
            "outcome": outcome,
            "step": problem.step if problem else "data",
            "reply": problem.server_reply if problem else _refusal_text(refused),
            "advice": problem.advice if problem else "",
        }
        # Only the claim holder writes: a worker whose lease ran out lost the message.
        recorded, mine = commit_result(
            self.worker, email.pk, changes, attempt, check.pk if check is not None else None
        )
        if recorded:
            self.counts[outcome] += 1
            deliverystats.recorded(email, outcome, problem, now)
        return mine

    def _accepted_by_all(
        self, email: OutboundEmail, refused, now: datetime.datetime, check: OutboundEmail | None
    ) -> bool:
        """record() for a message every recipient got: see commit_sent()."""
        attempt = {
            "at": now,
            "worker": self.worker,
            "outcome": "sent",
            "step": "data",
            "reply": _refusal_text(refused),
            "advice": "",
        }
        recorded, mine = commit_sent(
            self.worker, email.pk, attempt, check.pk if check is not None else None
        )
        if recorded:
            self.counts["sent"] += 1
            deliverystats.recorded(email, "sent", None, now)
            if not self._accepted:
                self._accepted_since = time.monotonic()
            self._accepted.append(Accepted(email.pk, email.recipients, now))
            if (
                len(self._accepted) >= settings.OUTBOX_SETTLE_EVERY
                or time.monotonic() - self._accepted_since >= settings.OUTBOX_SETTLE_SECONDS
            ):
                self.settle()
        return mine


def _outcome(status: str, refused, problem) -> str:
    if status == Status.SENT:
        return "partly sent" if refused else "sent"
    if status == Status.QUEUED:
        return "retry"
    return "failed"


def _refusal_text(refused: dict[str, tuple[int, str]] | None) -> str:
    """The server's own final reply (the transport's Accepted.reply: "250 2.0.0 Ok: queued as
    4Xyz" traces the message in the relay's log), then each recipient it refused."""
    final = getattr(refused, "reply", "") or "250 accepted"
    if not refused:
        return final
    refusals = "; ".join(f"{a}: {code} {text}" for a, (code, text) in refused.items())
    return f"{final}; {refusals}"


def schedule_retries() -> datetime.datetime | None:
    """When the next queued message is due, for a deferred wake-up; not before the breaker
    lets the queue go."""
    nxt = OutboundEmail.objects.filter(status=Status.QUEUED).order_by("next_attempt_at").first()
    if nxt is None:
        return None
    state = breaker()
    if state is not None and state.until is not None:
        return max(nxt.next_attempt_at, state.until)
    return nxt.next_attempt_at


def retry_soon() -> int:
    """After the SMTP settings change: waiting messages are tried again now, and a server
    that could not be reached is tried again at once."""
    reset_breaker()
    count = OutboundEmail.objects.filter(
        status=Status.QUEUED, next_attempt_at__gt=timezone.now()
    ).update(next_attempt_at=timezone.now())
    return count
