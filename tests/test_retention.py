"""Retention: purge_outbox in bounded batches, the policy per kind of record, the daily run by
the workers (exactly one per day), and apply_retention by hand."""

from __future__ import annotations

import datetime
import io
import sqlite3
import uuid

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gatewaymgr.models import Invitation, InvitationBatch
from notifications.models import (
    DeliveryAttempt,
    Dispatch,
    Event,
    EventSource,
    Integration,
    OutboundBody,
    OutboundEmail,
    Status,
)
from smtpsettings.models import SmtpSettingsChange, SmtpTestRun

pytestmark = pytest.mark.django_db

BODY = "b" * 2000  # stands for a sealed message


def ago(days: float) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(days=days)


def make_emails(count: int, status: str, days_old: float, body: str = "") -> list[int]:
    """Messages as the product leaves them, `days_old` days after they were last handled."""
    at = ago(days_old)
    rows = [
        OutboundEmail(
            created_at=at,
            subject=f"{status} {i}",
            envelope_from="gateway@example.com",
            recipients=[{"address": f"user{i}@example.com", "status": "sent", "reply": "250"}],
            status=status,
            next_attempt_at=at,
            sent_at=at if status == Status.SENT else None,
        )
        for i in range(count)
    ]
    created = OutboundEmail.objects.bulk_create(rows, batch_size=500)
    ids = [email.pk for email in created] or list(
        OutboundEmail.objects.filter(created_at=at).values_list("pk", flat=True)
    )
    if body:
        OutboundBody.objects.bulk_create([OutboundBody(email_id=pk, token=body) for pk in ids])
    DeliveryAttempt.objects.bulk_create(
        [DeliveryAttempt(email_id=pk, at=at, outcome=status) for pk in ids], batch_size=500
    )
    return ids


def make_event(days_old: float, email_id: int | None = None) -> Event:
    integration, _ = Integration.objects.get_or_create(name="ops", defaults={"recipients": []})
    event = Event.objects.create(
        type="gateway.down", source=EventSource.API, created_at=ago(days_old)
    )
    Dispatch.objects.create(
        event=event, integration=integration, integration_name="ops", email_id=email_id
    )
    return event


def make_invitation(*, expired_days: float = 0, revoked_days: float | None = None) -> Invitation:
    now = timezone.now()
    return Invitation.objects.create(
        email=f"{uuid.uuid4().hex[:8]}@example.com",
        token_hash=uuid.uuid4().hex,
        expires_at=now - datetime.timedelta(days=expired_days)
        if expired_days
        else now + datetime.timedelta(days=7),
        revoked_at=None if revoked_days is None else ago(revoked_days),
    )


def make_bulk_invitation(finished_days: float | None) -> InvitationBatch:
    return InvitationBatch.objects.create(
        invitees=[["a@example.com", ""]] * 3,
        total=3,
        done=3 if finished_days is not None else 1,
        created_at=ago((finished_days or 0) + 1),
        finished_at=None if finished_days is None else ago(finished_days),
    )


def make_test_run(days_old: float) -> SmtpTestRun:
    run = SmtpTestRun.objects.create(recipient="me@example.com", config={})
    SmtpTestRun.objects.filter(pk=run.pk).update(created_at=ago(days_old))
    return run


def make_task_record(days_old: float, status: str = "SUCCESSFUL"):
    from django_tasks_db.models import DBTaskResult

    at = ago(days_old)
    return DBTaskResult.objects.create(
        status=status,
        enqueued_at=at,
        started_at=at,
        finished_at=at if status in ("SUCCESSFUL", "FAILED") else None,
        args_kwargs={"args": [], "kwargs": {}},
        task_path="notifications.tasks.deliver_outbox",
        queue_name="default",
        backend_name="default",
        run_after=at,
        exception_class_path="",
        traceback="",
    )


# purge_outbox: the defects


def test_purge_outbox_never_loads_bodies_and_deletes_in_bounded_batches(settings):
    """It read every row due, body included, and deleted them all in one transaction (910k
    rows: 111 s and 10.2 GB). Now: keys only, a batch per transaction."""
    settings.RETENTION_BATCH_SIZE = 10
    make_emails(25, Status.SENT, days_old=40, body=BODY)  # a body left behind, say
    make_emails(3, Status.SENT, days_old=1)
    table = OutboundEmail._meta.db_table
    executed: list[tuple[str, int]] = []  # each statement, and how many values it was given

    def record(execute, sql, params, many, context):
        values = sum(len(p) if isinstance(p, list | tuple) else 1 for p in params or ())
        executed.append((sql, values))
        return execute(sql, params, many, context)

    with CaptureQueriesContext(connection) as queries, connection.execute_wrapper(record):
        call_command("purge_outbox", stdout=io.StringIO())
    body_table = OutboundBody._meta.db_table
    # Bodies are never read, only deleted with their messages.
    assert not [sql for sql, _ in executed if sql.startswith("SELECT") and body_table in sql]
    assert OutboundBody.objects.count() == 0
    deletes = [values for sql, values in executed if sql.startswith(f'DELETE FROM "{table}"')]
    assert deletes == [10, 10, 5]  # a statement per batch, at most a batch of ids each
    transactions = [q for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT")]
    assert len(transactions) >= 3  # (inside the test's own transaction, each is a savepoint)
    assert OutboundEmail.objects.count() == 3
    assert DeliveryAttempt.objects.count() == 3


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's variable limit")
def test_purge_outbox_past_sqlites_variable_limit():
    """Debian's SQLite allows 250,000 variables per statement; purging more sent mail than that
    at once failed with "too many SQL variables" and deleted nothing. The same with the limit of
    other builds (999, which Django assumes) and 1,200 messages."""
    connection.ensure_connection()
    limit = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
    before = connection.connection.getlimit(limit)
    make_emails(1200, Status.SENT, days_old=40)
    connection.connection.setlimit(limit, 999)
    try:
        out = io.StringIO()
        call_command("purge_outbox", stdout=out)
    finally:
        connection.connection.setlimit(limit, before)
    assert "Deleted 1200 sent e-mail(s) older than 30 day(s)." in out.getvalue()
    assert OutboundEmail.objects.count() == 0


# The policy, kind by kind


def test_every_kind_past_its_period_goes_and_the_rest_stays():
    from django_tasks_db.models import DBTaskResult

    old_sent = make_emails(2, Status.SENT, days_old=31)
    new_sent = make_emails(1, Status.SENT, days_old=29)
    old_failed = make_emails(2, Status.FAILED, days_old=91, body=BODY)
    make_emails(1, Status.FAILED, days_old=89, body=BODY)
    old_cancelled = make_emails(1, Status.CANCELLED, days_old=91, body=BODY)
    make_emails(1, Status.CANCELLED, days_old=89, body=BODY)
    old_event, new_event = make_event(91, email_id=old_failed[0]), make_event(89)
    old_run, new_run = make_test_run(31), make_test_run(29)
    make_task_record(2), make_task_record(2, status="FAILED")
    recent_record = make_task_record(0.5)
    expired_long_ago = make_invitation(expired_days=91)
    expired_long_ago.groups.add(Group.objects.create(name="operators"))
    finished_long_ago = make_bulk_invitation(finished_days=91)
    finished_lately, unfinished = make_bulk_invitation(89), make_bulk_invitation(None)
    expired_lately = make_invitation(expired_days=89)
    revoked_long_ago = make_invitation(revoked_days=91)
    pending = make_invitation()

    out = io.StringIO()
    call_command("apply_retention", stdout=out)

    report = out.getvalue()
    assert "sent mail (older than 30 day(s), RETENTION_SENT_DAYS): removed 2" in report
    assert "failed mail (older than 90 day(s), RETENTION_FAILED_DAYS): removed 2" in report
    assert "cancelled mail (older than 90 day(s), RETENTION_FAILED_DAYS): removed 1" in report
    assert "events (older than 90 day(s), RETENTION_EVENTS_DAYS): removed 1" in report
    assert "SMTP test runs (older than 30 day(s), RETENTION_TEST_RUNS_DAYS): removed 1" in report
    assert "removed 2 (with" not in report.split("finished task records")[1].split("\n")[0]
    assert "expired or revoked invitations" in report
    assert "SMTP settings history: kept for good (audit log)" in report

    emails = set(OutboundEmail.objects.values_list("pk", flat=True))
    assert not emails & set(old_sent + old_failed + old_cancelled)
    assert set(new_sent) <= emails and len(emails) == 3
    assert OutboundBody.objects.count() == 2  # the two recent ones that wait to be retried
    assert DeliveryAttempt.objects.count() == 3
    assert list(Event.objects.all()) == [new_event]
    assert Dispatch.objects.filter(event=old_event).count() == 0
    assert list(SmtpTestRun.objects.all()) == [new_run]
    assert old_run.pk != new_run.pk
    assert list(DBTaskResult.objects.all()) == [recent_record]
    assert set(Invitation.objects.all()) == {expired_lately, pending}
    assert expired_long_ago.pk and revoked_long_ago.pk
    assert set(InvitationBatch.objects.all()) == {finished_lately, unfinished}
    assert finished_long_ago.pk
    assert Group.objects.filter(name="operators").exists()
    assert not Invitation.groups.through.objects.exists()  # the invitation's link to it went


def test_queued_and_sending_mail_and_open_invitations_are_never_removed(settings):
    for name in ("RETENTION_SENT_DAYS", "RETENTION_FAILED_DAYS", "RETENTION_INVITATIONS_DAYS"):
        setattr(settings, name, 1)
    waiting = make_emails(2, Status.QUEUED, days_old=400, body=BODY)
    held = make_emails(1, Status.SENDING, days_old=400, body=BODY)
    # An event whose message still waits keeps its dispatch (and so its event).
    event = make_event(400, email_id=waiting[0])
    pending = make_invitation()
    accepted = make_invitation(expired_days=400)
    Invitation.objects.filter(pk=accepted.pk).update(accepted_at=ago(401))

    call_command("apply_retention", stdout=io.StringIO())

    assert set(OutboundEmail.objects.values_list("pk", flat=True)) == set(waiting + held)
    assert OutboundBody.objects.count() == 3
    assert list(Event.objects.all()) == [event]
    assert set(Invitation.objects.all()) == {pending, accepted}


def test_the_settings_history_is_kept_for_good(settings):
    for kind in ("SENT", "FAILED", "EVENTS", "TEST_RUNS", "INVITATIONS"):
        setattr(settings, f"RETENTION_{kind}_DAYS", 1)
    for years in (1, 5, 20):
        SmtpSettingsChange.objects.create(
            changed_at=ago(365 * years), actor="alice", source="web page", changes=[]
        )
    call_command("apply_retention", stdout=io.StringIO())
    assert SmtpSettingsChange.objects.count() == 3


def test_a_period_of_0_keeps_a_kind_for_good(settings):
    settings.RETENTION_SENT_DAYS = 0
    settings.RETENTION_EVENTS_DAYS = 0
    make_emails(2, Status.SENT, days_old=3000)
    make_event(3000)
    out = io.StringIO()
    call_command("apply_retention", stdout=out)
    assert "sent mail: kept for good (RETENTION_SENT_DAYS is 0)" in out.getvalue()
    assert "events: kept for good (RETENTION_EVENTS_DAYS is 0)" in out.getvalue()
    assert OutboundEmail.objects.count() == 2 and Event.objects.count() == 1
    out = io.StringIO()
    call_command("purge_outbox", stdout=out)
    assert "kept for good" in out.getvalue() and OutboundEmail.objects.count() == 2


def test_dry_run_counts_and_removes_nothing():
    make_emails(3, Status.SENT, days_old=31)
    make_emails(2, Status.FAILED, days_old=91, body=BODY)
    make_event(91)
    out = io.StringIO()
    call_command("apply_retention", "--dry-run", stdout=out)
    assert "sent mail (older than 30 day(s), RETENTION_SENT_DAYS): would remove 3" in out.getvalue()
    assert "failed mail (older than 90 day(s), RETENTION_FAILED_DAYS): would remove 2" in (
        out.getvalue()
    )
    assert "events (older than 90 day(s), RETENTION_EVENTS_DAYS): would remove 1" in out.getvalue()
    assert OutboundEmail.objects.count() == 5 and Event.objects.count() == 1


def test_a_dispatch_whose_message_goes_keeps_its_event():
    sent = make_emails(1, Status.SENT, days_old=40)
    event = make_event(10, email_id=sent[0])
    call_command("purge_outbox", stdout=io.StringIO())
    assert list(Dispatch.objects.filter(event=event).values_list("email_id", flat=True)) == [None]


def test_bulk_send_records_go_with_their_last_message():
    from notifications.models import OutboundBatch

    kept_for_failed = OutboundBatch.objects.create(key="a" * 32, total=2, created_at=ago(40))
    emptied = OutboundBatch.objects.create(key="b" * 32, total=2, created_at=ago(40))
    for batch, status in ((kept_for_failed, Status.FAILED), (emptied, Status.SENT)):
        OutboundEmail.objects.filter(pk__in=make_emails(2, status, days_old=40)).update(batch=batch)
    call_command("apply_retention", stdout=io.StringIO())
    assert list(OutboundBatch.objects.all()) == [kept_for_failed]


@pytest.mark.parametrize(
    ("configured", "expected_days"),
    [
        ({"sent mail": 30, "events": 90}, {"sent mail": 30, "events": 90}),
        ({"sent mail": 0, "events": 1}, {"sent mail": None, "events": 1}),
    ],
)
def test_cutoffs_follow_the_periods(configured, expected_days):
    from notifications.retention import cutoffs, periods

    now = timezone.now()
    limits = cutoffs(now, {**periods(), **configured})
    for name, days in expected_days.items():
        assert limits[name] == (None if days is None else now - datetime.timedelta(days=days))
    # Task records count in hours, and 0 removes them at once (OUTBOX_TASK_RETENTION_HOURS).
    hours = cutoffs(now, {**periods(), "finished task records": 0})["finished task records"]
    assert hours == now
    assert cutoffs(now, periods())["bulk-send records"] == now - datetime.timedelta(days=1)


# The daily run


def test_one_claim_per_day_whoever_asks():
    from notifications.retention import claim
    from retention.models import DailyRun

    DailyRun.objects.all().delete()  # as a flushed database has it: the row is made
    now = timezone.now()
    assert claim("w1", now) == (True, now + datetime.timedelta(hours=24))
    assert claim("w2", now) == (False, now + datetime.timedelta(hours=24))
    assert claim("w1", now + datetime.timedelta(hours=23)) == (
        False,
        now + datetime.timedelta(hours=24),
    )
    later = now + datetime.timedelta(hours=24)
    assert claim("w2", later)[0] is True
    assert DailyRun.objects.get().worker == "w2"


@pytest.mark.django_db(transaction=True)
def test_the_workers_apply_it_by_themselves_exactly_one_per_day(workers, tmp_path):
    from django_tasks_db.models import DBTaskResult

    from retention.models import DailyRun
    from tests.workers import wait_until

    DailyRun.objects.update_or_create(pk=1, defaults={"started_at": None, "worker": ""})
    make_emails(3, Status.FAILED, days_old=91, body=BODY)
    make_emails(2, Status.CANCELLED, days_old=91)
    make_emails(4, Status.SENT, days_old=31)
    make_event(91)
    make_test_run(31)
    make_invitation(expired_days=91)
    kept = make_emails(1, Status.SENT, days_old=1)

    started = [workers() for _ in range(3)]
    wait_until(
        lambda: DailyRun.objects.filter(finished_at__isnull=False).exists(),
        timeout=30,
        what="the daily retention run",
    )
    assert list(OutboundEmail.objects.values_list("pk", flat=True)) == kept
    assert not Event.objects.exists() and not Dispatch.objects.exists()
    assert not SmtpTestRun.objects.exists() and not Invitation.objects.exists()
    assert not DBTaskResult.objects.filter(finished_at__lt=ago(2)).exists()
    run = DailyRun.objects.get()
    assert run.removed["failed mail"] == 3 and run.removed["sent mail"] == 4

    # Every worker looked (their housekeeping ran), one applied it.
    def logs() -> list[str]:
        return [(tmp_path / f"worker-{i}.log").read_text() for i in range(len(started))]

    wait_until(
        lambda: all(
            "Retention: applied by" in log or "Retention: not due" in log for log in logs()
        ),
        what="every worker's retention check",
    )
    assert sum(log.count("Retention: applied by") for log in logs()) == 1
    assert sum(log.count("Retention: not due") for log in logs()) == 2
    assert all(process.poll() is None for process in started)


def test_asking_between_runs_costs_nothing(monkeypatch):
    """Every worker asks at each housekeeping (every OUTBOX_SWEEP_SECONDS): when another worker
    has run it today, this one looks once, then not again until the next run is due."""
    from notifications import retention
    from retention.models import DailyRun

    monkeypatch.setattr(retention, "_next_check", 0.0)
    DailyRun.objects.update_or_create(
        pk=1, defaults={"started_at": timezone.now(), "worker": "elsewhere:1"}
    )
    with CaptureQueriesContext(connection) as first:
        assert retention.apply_if_due() is False
    assert 1 <= len(first.captured_queries) <= 2  # the conditional UPDATE, the next due time
    with CaptureQueriesContext(connection) as later:
        for _ in range(100):
            assert retention.apply_if_due() is False
    assert later.captured_queries == []
    assert DailyRun.objects.get().worker == "elsewhere:1"
