"""Retention: what the product keeps, and for how long; the purge that applies it; and the daily
run by the workers.

Each kind of record has a period in days (RETENTION_* settings; 0 or empty keeps it for good).
Mail that is still queued or being sent, and an invitation that can still be accepted, are never
past it. The settings history (smtpsettings.SmtpSettingsChange) is an audit log: no kind names
it, so it is kept for good.

A purge goes in batches, one transaction each: the ids of the next batch are read through an
index in the order of a key column (keyset: each batch starts where the last one ended, so the
whole purge reads each row once), locked (SKIP LOCKED on PostgreSQL: a row someone holds waits
for the next run), and deleted from the primary keys alone with a few plain statements per
table that follow the models' relations, whatever they are (delete_by_pk): bodies, recipients
and attempts go with their message, dispatches with their event, and a dispatch whose message
goes keeps its event (its message becomes NULL). Nothing but keys is read, so memory stays flat
at any size, and no statement names more than a batch of ids (SQLite's variable limit).

Every worker's housekeeping calls apply_if_due(). It costs nothing until the next run is due
(a time kept in the process); then one conditional UPDATE of the one-row retention.DailyRun
claims the run, so with any number of workers exactly one applies the policy per 24 hours, in a
thread of its own so delivery never waits for it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.db.models import CASCADE, DO_NOTHING, SET_NULL, Exists, Model, OuterRef, Q
from django.db.models.deletion import get_candidate_relations_to_delete
from django.db.models.signals import post_delete, pre_delete
from django.utils import timezone

log = logging.getLogger(__name__)

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
PERIOD = datetime.timedelta(hours=24)  # between two daily runs
# Django assumes SQLite's compile-time default of 999 variables per statement; a batch's ids
# plus a few more parameters stay under it.
SQLITE_BATCH_CAP = 900


@dataclass(frozen=True)
class Kind:
    """One kind of record the policy removes once it is older than its period."""

    name: str  # as the command prints it
    model: str  # app_label.ModelName
    setting: str | None  # the period's setting; None: follows other kinds (no period of its own)
    key: str  # the indexed column the batches walk, the primary key breaking ties
    condition: Callable[[datetime.datetime], Q]  # the rows past `cutoff` that may go
    unit: datetime.timedelta = DAY
    zero_keeps: bool = True  # a period of 0 keeps for good (else: removes at once)
    requires_app: str | None = None

    def cutoff(self, now: datetime.datetime, period: float | None) -> datetime.datetime | None:
        """Rows older than this go; None keeps them all."""
        if period is None:
            return now - DAY
        if period <= 0 and self.zero_keeps:
            return None
        return now - self.unit * max(period, 0)

    def model_class(self) -> type[Model]:
        return apps.get_model(self.model)

    def installed(self) -> bool:
        return self.requires_app is None or apps.is_installed(self.requires_app)


def _sent(cutoff: datetime.datetime) -> Q:
    # Walked in created_at order (the (status, created_at, id) index): the oldest come first,
    # and the last batch passes over the mail sent since the cutoff once.
    return Q(status="sent", sent_at__lt=cutoff)


def _finished_as(status: str) -> Callable[[datetime.datetime], Q]:
    # A failed or cancelled message was last handled at its next_attempt_at (a retry from the
    # page resets it): the (status, next_attempt_at) index finds them.
    return lambda cutoff: Q(status=status, next_attempt_at__lt=cutoff)


def _event(cutoff: datetime.datetime) -> Q:
    from .models import Dispatch, Status

    pending = Dispatch.objects.filter(
        event=OuterRef("pk"), email__status__in=[Status.QUEUED, Status.SENDING]
    )
    return Q(created_at__lt=cutoff) & ~Q(Exists(pending))


def _invitation(cutoff: datetime.datetime) -> Q:
    # Accepted ones stay (they say who invited the user); pending ones can still be accepted.
    expired = Q(revoked_at__isnull=True, expires_at__lt=cutoff)
    return Q(accepted_at__isnull=True) & (expired | Q(revoked_at__lt=cutoff))


def _task_record(cutoff: datetime.datetime) -> Q:
    return Q(status__in=["SUCCESSFUL", "FAILED"], finished_at__lt=cutoff)


def _empty_batch(cutoff: datetime.datetime) -> Q:
    # A bulk send's record, once every message of it is gone (a day's margin past its creation).
    from .models import OutboundEmail

    return Q(created_at__lt=cutoff) & ~Q(Exists(OutboundEmail.objects.filter(batch=OuterRef("pk"))))


# In this order: events before the mail their dispatches point at (no dispatch to set NULL),
# bulk-send records after their messages.
KINDS: tuple[Kind, ...] = (
    Kind(
        "finished task records",
        "django_tasks_database.DBTaskResult",
        "OUTBOX_TASK_RETENTION_HOURS",
        "pk",
        _task_record,
        unit=HOUR,
        zero_keeps=False,
        requires_app="django_tasks_db",
    ),
    Kind(
        "SMTP test runs",
        "smtpsettings.SmtpTestRun",
        "RETENTION_TEST_RUNS_DAYS",
        "pk",
        lambda cutoff: Q(created_at__lt=cutoff),
    ),
    Kind(
        "expired or revoked invitations",
        "gatewaymgr.Invitation",
        "RETENTION_INVITATIONS_DAYS",
        "pk",
        _invitation,
    ),
    Kind(
        "finished bulk invitations",  # a big submission's addresses and progress
        "gatewaymgr.InvitationBatch",
        "RETENTION_INVITATIONS_DAYS",
        "finished_at",
        lambda cutoff: Q(finished_at__lt=cutoff),
    ),
    Kind("events", "notifications.Event", "RETENTION_EVENTS_DAYS", "created_at", _event),
    Kind(
        "failed mail",
        "notifications.OutboundEmail",
        "RETENTION_FAILED_DAYS",
        "next_attempt_at",
        _finished_as("failed"),
    ),
    Kind(
        "cancelled mail",
        "notifications.OutboundEmail",
        "RETENTION_FAILED_DAYS",
        "next_attempt_at",
        _finished_as("cancelled"),
    ),
    Kind("sent mail", "notifications.OutboundEmail", "RETENTION_SENT_DAYS", "created_at", _sent),
    Kind("bulk-send records", "notifications.OutboundBatch", None, "created_at", _empty_batch),
)
SENT_MAIL = next(kind for kind in KINDS if kind.name == "sent mail")


def periods(source: object = settings) -> dict[str, float | None]:
    """Each kind's period as configured (None for a kind with no setting of its own)."""
    return {kind.name: getattr(source, kind.setting) if kind.setting else None for kind in KINDS}


def cutoffs(
    now: datetime.datetime, configured: Mapping[str, float | None]
) -> dict[str, datetime.datetime | None]:
    """Each kind's cutoff: rows older than it go; None keeps the kind for good."""
    return {kind.name: kind.cutoff(now, configured[kind.name]) for kind in KINDS}


@dataclass
class Outcome:
    """What one kind came to: how many rows past the cutoff were removed (or would be), and the
    dependent rows removed with them, by model."""

    kind: Kind
    cutoff: datetime.datetime | None
    removed: int = 0
    with_them: Counter[str] = field(default_factory=Counter)
    stopped: bool = False


def batch_size() -> int:
    size = max(1, settings.RETENTION_BATCH_SIZE)
    return min(size, SQLITE_BATCH_CAP) if connection.vendor == "sqlite" else size


def purge(
    kind: Kind,
    cutoff: datetime.datetime,
    *,
    size: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Delete the rows of `kind` past `cutoff`, a batch per transaction."""
    model = kind.model_class()
    label = model._meta.label
    size = size or batch_size()
    outcome = Outcome(kind, cutoff)
    due = model._base_manager.filter(kind.condition(cutoff)).order_by(kind.key, "pk")
    last: tuple[object, object] | None = None
    while True:
        if should_stop():
            outcome.stopped = True
            return outcome
        batch = due if last is None else due.filter(_after(kind.key, *last))
        with transaction.atomic():
            if connection.vendor == "postgresql":
                # Walk the index in key order. With stale statistics (right after a burst,
                # before autovacuum analyzes) the planner may prefer to collect and sort every
                # row still due, for each batch: the whole purge would grow with its square.
                _sorting(False)
            rows = list(
                batch.select_for_update(skip_locked=True).values_list(kind.key, "pk")[:size]
            )
            if connection.vendor == "postgresql":
                _sorting(True)  # the deletes' own triggers sort (the outbox's status counts)
            if not rows:
                return outcome
            # Locked and matching, so nothing changes them before the commit: keys are enough.
            counts = delete_by_pk(model, [pk for _, pk in rows])
        last = rows[-1]
        outcome.removed += counts.pop(label, 0)
        outcome.with_them.update(counts)


def _sorting(allowed: bool) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL enable_sort = {'on' if allowed else 'off'}")


def delete_by_pk(model: type[Model], pks: list) -> Counter[str]:
    """Delete these rows and what depends on them, as the models' relations say (CASCADE
    deletes, SET_NULL sets NULL, DO_NOTHING leaves it to the database), with a few plain
    statements per table and no instance in memory. Returns the rows removed per model label.
    Where Django's collector must act in Python (signal receivers, generic relations, other
    on_delete rules, inherited models), the collector deletes the batch instead."""
    counts: Counter[str] = Counter()
    if not pks:
        return counts
    if not _plain(model):
        _, by_label = model._base_manager.filter(pk__in=pks).only("pk").delete()
        counts.update(by_label)
        return counts
    key = model._meta.pk
    values = [key.get_db_prep_value(pk, connection, prepared=False) for pk in pks]
    _delete_where(model, key.column, values, counts)
    return counts


def _dependants(model: type[Model]) -> list:
    return [
        relation
        for relation in get_candidate_relations_to_delete(model._meta)
        if relation.field.remote_field.on_delete is not DO_NOTHING
    ]


def _plain(model: type[Model], seen: frozenset = frozenset()) -> bool:
    """Whether deleting `model`'s rows needs nothing but SQL (checked down the cascade)."""
    opts = model._meta
    if (
        opts.parents
        or pre_delete.has_listeners(model)
        or post_delete.has_listeners(model)
        or any(hasattr(f, "bulk_related_objects") for f in opts.private_fields)
    ):
        return False
    for relation in _dependants(model):
        rule = relation.field.remote_field.on_delete
        if rule is SET_NULL:
            continue
        if rule is not CASCADE:
            return False
        related = relation.related_model
        if related not in seen and not _plain(related, seen | {model}):
            return False
    return True


def _delete_where(model: type[Model], column: str, values: list, counts: Counter[str]) -> None:
    """DELETE the rows of `model` whose `column` is in `values`, their dependants first."""
    quote = connection.ops.quote_name
    table, pk = quote(model._meta.db_table), model._meta.pk.column
    dependants = _dependants(model)
    with connection.cursor() as cursor:
        for chunk in _chunks(values):
            where = column
            if dependants:
                if column != pk:  # the dependants point at these rows' keys: find them
                    cursor.execute(
                        f"SELECT {quote(pk)} FROM {table} WHERE {_in(column, chunk)}",
                        _params(chunk),
                    )
                    chunk, where = [row[0] for row in cursor.fetchall()], pk
                    if not chunk:
                        continue
                for relation in dependants:
                    _follow(cursor, relation, table, pk, chunk, counts)
            cursor.execute(f"DELETE FROM {table} WHERE {_in(where, chunk)}", _params(chunk))
            counts[model._meta.label] += cursor.rowcount


def _follow(cursor, relation, table: str, pk: str, keys: list, counts: Counter[str]) -> None:
    """Apply one relation's on_delete to the rows that point at `keys` of `table`."""
    quote = connection.ops.quote_name
    field, related = relation.field, relation.related_model
    target = field.target_field.column
    referenced = keys
    if target != pk:  # a key to another unique column: its values, not the primary keys
        cursor.execute(f"SELECT {quote(target)} FROM {table} WHERE {_in(pk, keys)}", _params(keys))
        referenced = [row[0] for row in cursor.fetchall()]
    if field.remote_field.on_delete is CASCADE:
        _delete_where(related, field.column, referenced, counts)
    else:  # SET_NULL
        column = quote(field.column)
        cursor.execute(
            f"UPDATE {quote(related._meta.db_table)} SET {column} = NULL "
            f"WHERE {_in(field.column, referenced)}",
            _params(referenced),
        )


def _in(column: str, values: list) -> str:
    """`column` IN values: one array parameter on PostgreSQL (a short statement, planned
    quickly), a list of parameters elsewhere (fewer than SQLite's limit: see _chunks)."""
    if connection.vendor == "postgresql":
        return f"{connection.ops.quote_name(column)} = ANY(%s)"
    return f"{connection.ops.quote_name(column)} IN ({', '.join(['%s'] * len(values))})"


def _params(values: list) -> list:
    return [list(values)] if connection.vendor == "postgresql" else list(values)


def _chunks(values: list) -> list[list]:
    size = batch_size()
    return [values[i : i + size] for i in range(0, len(values), size)]


def _after(key: str, last_key: object, last_pk: object) -> Q:
    """The rows after (last_key, last_pk) in (key, pk) order; the first term lets an index on
    `key` start the scan there."""
    if key == "pk":
        return Q(pk__gt=last_pk)
    return Q(**{f"{key}__gte": last_key}) & (
        Q(**{f"{key}__gt": last_key}) | Q(**{key: last_key, "pk__gt": last_pk})
    )


def count(kind: Kind, cutoff: datetime.datetime) -> Outcome:
    """What purge() would remove now (its own rows, not their dependants)."""
    removed = kind.model_class()._base_manager.filter(kind.condition(cutoff)).count()
    return Outcome(kind, cutoff, removed)


def apply_policy(
    now: datetime.datetime | None = None,
    *,
    dry_run: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[Outcome]:
    """Apply the retention policy as configured, kind by kind."""
    limits = cutoffs(now or timezone.now(), periods())
    outcomes = []
    for kind in KINDS:
        cutoff = limits[kind.name]
        if not kind.installed():
            continue
        if cutoff is None:
            outcomes.append(Outcome(kind, None))
        elif dry_run:
            outcomes.append(count(kind, cutoff))
        else:
            outcome = purge(kind, cutoff, should_stop=should_stop)
            outcomes.append(outcome)
            if outcome.stopped:
                break
    return outcomes


# The daily run.


def claim(worker: str, now: datetime.datetime) -> tuple[bool, datetime.datetime]:
    """Claim today's run for `worker`: true for exactly one caller per PERIOD, whatever the
    number of workers. Also returns when the next run is due."""
    from retention.models import DailyRun

    for _ in range(2):
        claimed = (
            DailyRun.objects.filter(pk=1)
            .filter(Q(started_at__isnull=True) | Q(started_at__lte=now - PERIOD))
            .update(started_at=now, finished_at=None, worker=worker, removed={})
        )
        if claimed:
            return True, now + PERIOD
        started = DailyRun.objects.filter(pk=1).values_list("started_at", flat=True).first()
        if started is not None:
            return False, started + PERIOD
        # The row is missing (a flushed database): make it, then claim it like anyone else.
        DailyRun.objects.bulk_create([DailyRun(pk=1)], ignore_conflicts=True)
    return False, now + PERIOD


_next_check = 0.0  # monotonic time before which this process does not look
_running: threading.Thread | None = None
CHECK_AT_MOST_EVERY = 3600.0  # seconds: an edited row (or another clock) is seen within this
CHECK_AT_LEAST_EVERY = 60.0


def apply_if_due() -> bool:
    """Called by every worker's housekeeping: starts the daily run in a thread when it is due
    and this worker claims it. Returns whether it started one."""
    global _next_check, _running
    if not settings.RETENTION_DAILY or time.monotonic() < _next_check:
        return False
    if _running is not None and _running.is_alive():
        return False
    from .delivery import WORKER_ID

    now = timezone.now()
    claimed, next_due = claim(WORKER_ID, now)
    wait = (next_due - now).total_seconds()
    _next_check = time.monotonic() + min(max(wait, CHECK_AT_LEAST_EVERY), CHECK_AT_MOST_EVERY)
    if not claimed:
        log.info("Retention: not due; the next run is at %s", f"{next_due:%Y-%m-%d %H:%M %Z}")
    else:
        _running = threading.Thread(
            target=run_daily, args=(WORKER_ID, now), name="retention", daemon=True
        )
        _running.start()
    return claimed


def run_daily(worker: str, started: datetime.datetime) -> list[Outcome]:
    """The claimed run: apply the policy, stop between batches when the worker stops, and
    record what was removed."""
    from retention.models import DailyRun

    from .worker import running_loop

    def stopping() -> bool:
        loop = running_loop()
        return loop is not None and loop.stopping.is_set()

    try:
        outcomes = apply_policy(started, should_stop=stopping)
        removed = {o.kind.name: o.removed for o in outcomes if o.cutoff is not None}
        DailyRun.objects.filter(pk=1, worker=worker, started_at=started).update(
            finished_at=timezone.now(), removed=removed
        )
        log.info("Retention: applied by %s: %s", worker, summary(outcomes))
        return outcomes
    except Exception:
        log.exception("Retention: the daily run failed; the next one is in a day")
        return []
    finally:
        connection.close()


def summary(outcomes: list[Outcome]) -> str:
    parts = [f"{o.removed} {o.kind.name}" for o in outcomes if o.cutoff is not None]
    return ", ".join(parts) + " removed" if parts else "nothing to remove"
