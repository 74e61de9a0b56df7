"""The outbox with real worker processes (manage.py outbox_worker) and a real SMTP server:
crashes, restarts, competing workers, a task queue that loses its jobs, stop signals. Runs on
SQLite and on PostgreSQL with the database task backend, and again on Redis with RQ
(scripts/test runs it under `python -m tests.redis_server`, which sets TASKS_BACKEND=rq)."""

from __future__ import annotations

import signal
import time
from collections import Counter

import pytest
from django.conf import settings
from django.core.mail import get_connection, send_mail
from django.test import override_settings

from notifications.models import OutboundEmail, Status
from smtpsettings import store
from smtpsettings.models import SmtpTestRun
from smtpsettings.tasks import run_smtp_test
from tests.outbox import OUTBOX, point_settings_at, queue
from tests.smtpservers import Recorder, free_port, smtp_server
from tests.workers import lose_task_queue, pending_wake_ups, running_tasks, task_records, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def sent() -> int:
    return OutboundEmail.objects.filter(status=Status.SENT).count()


def outbox():
    return get_connection(OUTBOX)  # as EMAIL_BACKEND is in production (tests use locmem)


def message_ids(server) -> Counter:
    return Counter(m.message["Message-ID"] for m in server.messages)


def test_server_down_then_up_delivers_all_exactly_once(workers):
    port = free_port()
    point_settings_at("smtp.gatewaymgr.test", port)
    queue(100)
    workers()
    wait_until(
        lambda: OutboundEmail.objects.filter(last_error__contains="Nothing accepts").count() == 100,
        what="the worker to hold all 100 while the server is down",
    )
    assert sent() == 0
    with smtp_server(port=port) as server:
        wait_until(lambda: sent() == 100, what="all 100 delivered")
    # The outage was the server's, not theirs: only the attempt that delivered counts. (Read
    # at the end: a claim charges its attempt until the outage gives it back.)
    assert set(OutboundEmail.objects.values_list("attempts", flat=True)) == {1}
    ids = message_ids(server)
    assert len(ids) == 100 and set(ids.values()) == {1}
    assert set(ids) == set(OutboundEmail.objects.values_list("message_id", flat=True))


def test_worker_killed_mid_batch_loses_nothing(workers):
    recorder = Recorder(data_delay=0.01)
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(300)
        first = workers(OUTBOX_BATCH_SIZE="100")
        wait_until(lambda: len(server.messages) >= 40, what="the first deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert sent() < 300
        workers(OUTBOX_BATCH_SIZE="100")
        wait_until(lambda: sent() == 300, what="all 300 delivered after the restart")
    ids = message_ids(server)
    assert set(ids) == set(OutboundEmail.objects.values_list("message_id", flat=True))
    # At least once: only the message in flight when the worker died may arrive twice.
    assert sum(ids.values()) - len(ids) <= 1


def test_two_workers_never_send_the_same_message_twice(workers):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        for _ in range(10):
            queue(100)
        workers(OUTBOX_BATCH_SIZE="20")
        workers(OUTBOX_BATCH_SIZE="20")
        wait_until(lambda: sent() == 1000, timeout=120, what="1,000 delivered by two workers")
    ids = message_ids(server)
    assert len(ids) == 1000 and max(ids.values()) == 1
    workers_seen = set(OutboundEmail.objects.values_list("history__worker", flat=True).distinct())
    assert len(workers_seen) == 2  # both took part


# --- Recovery by construction (issue 12): the database is the source of truth. Whatever the
# task queue loses, every worker's sweep finds due mail and expired leases on its own.


def test_retries_go_out_after_the_task_queue_lost_every_job(workers):
    recorder = Recorder(refuse_sender="451 4.3.0 Try again later")
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(20)
        workers(OUTBOX_RETRY_FIRST_DELAY="4")
        wait_until(
            lambda: (
                OutboundEmail.objects.filter(status=Status.QUEUED, attempts__gte=1).count() == 20
            ),
            what="a first attempt for all 20, answered 451",
        )
        lose_task_queue()  # Redis flushed (RQ) or every task row gone (database backend)
        recorder.refuse_sender = None
        wait_until(lambda: sent() == 20, timeout=30, what="all 20 delivered after the loss")
    assert len(message_ids(server)) == 20


def test_batch_of_a_worker_killed_after_its_wake_up_is_sent_again(workers):
    recorder = Recorder(data_delay=0.05)
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(200)
        first = workers(OUTBOX_BATCH_SIZE="50")
        wait_until(lambda: len(server.messages) >= 10, what="the first deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert OutboundEmail.objects.filter(status=Status.SENDING).exists()
        # Its recovery wake-up has fired, or was lost: nothing in the task queue points at
        # the batch it held.
        lose_task_queue()
        workers(OUTBOX_BATCH_SIZE="50")
        wait_until(lambda: sent() == 200, timeout=60, what="all 200 delivered")
    ids = message_ids(server)
    assert len(ids) == 200 and sum(ids.values()) - 200 <= 1  # only the one in flight twice


def test_a_send_slower_than_the_lease_is_not_taken_by_another_worker(workers):
    """The lease is short (so a dead worker's mail goes out again within a minute), yet a
    live worker keeps its claims for as long as one send takes."""
    recorder = Recorder(data_delay=4)  # each send outlasts the 2 s lease twice over
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port, timeout=30)
        queue(3)
        workers()
        wait_until(lambda: OutboundEmail.objects.filter(status=Status.SENDING).count() == 3)
        workers()  # idle: it sweeps for expired leases every second
        wait_until(lambda: sent() == 3, timeout=60, what="all 3 delivered")
    assert sorted(message_ids(server).values()) == [1, 1, 1]
    assert OutboundEmail.objects.values("history__worker").distinct().count() == 1


@pytest.mark.skipif(settings.TASKS_BACKEND != "rq", reason="the wake-up goes to Redis on RQ only")
def test_send_mail_while_redis_is_down_returns_and_the_mail_goes_later(workers):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        nowhere = {"default": {"URL": f"redis://127.0.0.1:{free_port()}/0"}}
        with override_settings(RQ_QUEUES=nowhere):  # nothing listens there: Redis is down
            assert send_mail("Hello", "Body", None, ["bob@example.com"], connection=outbox()) == 1
        assert OutboundEmail.objects.filter(status=Status.QUEUED).count() == 1
        workers()
        wait_until(lambda: sent() == 1, timeout=30, what="the message delivered")
    assert len(server.messages) == 1


def test_many_messages_stored_make_one_wake_up(workers):
    lose_task_queue()  # Redis outlives a test: start from an empty queue
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        for i in range(100):  # each call its own transaction: 100 wake-up requests
            send_mail(f"Message {i}", "Body", None, ["bob@example.com"], connection=outbox())
        assert pending_wake_ups() == 1
        workers()
        wait_until(lambda: sent() == 100, what="all 100 delivered")


def test_waiting_retries_schedule_no_task_per_delivery(workers):
    lose_task_queue()  # Redis outlives a test: start from an empty queue
    recorder = Recorder(refuse_recipients={"later@example.com": "451 4.2.0 Mailbox busy"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(20, recipients=["later@example.com"])
        workers(OUTBOX_RETRY_FIRST_DELAY="60")
        wait_until(
            lambda: OutboundEmail.objects.filter(attempts__gte=1).count() == 20,
            what="20 messages waiting for a retry",
        )
        for i in range(100):
            send_mail(f"Message {i}", "Body", None, ["bob@example.com"], connection=outbox())
        wait_until(lambda: sent() == 100, what="the other 100 delivered")
        # No task was left behind for the 20 retries: the workers' own sweep runs them.
        wait_until(lambda: pending_wake_ups() == 0, timeout=10, what="no wake-up left waiting")
    assert task_records() <= 101


@pytest.mark.skipif(
    settings.TASKS_BACKEND == "rq", reason="RQ expires finished jobs itself (result_ttl)"
)
def test_finished_task_records_are_pruned_without_a_command(workers):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        workers(OUTBOX_TASK_RETENTION_HOURS="0")
        for i in range(5):
            queue(2, prefix=f"Round {i}")
            wait_until(lambda i=i: sent() == 2 * (i + 1), what=f"round {i} delivered")
        wait_until(lambda: task_records() == 0, timeout=30, what="finished task records pruned")


@pytest.mark.skipif(
    settings.TASKS_BACKEND == "rq", reason="RQ's own maintenance fails abandoned jobs"
)
def test_no_task_record_left_running_after_a_worker_is_killed(workers):
    recorder = Recorder(data_delay=0.05)
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(100)
        first = workers()
        wait_until(lambda: len(server.messages) >= 10, what="the first deliveries")
        first.send_signal(signal.SIGKILL)
        first.wait()
        workers()
        wait_until(lambda: sent() == 100, timeout=60, what="all 100 delivered")
        wait_until(lambda: running_tasks() == 0, timeout=30, what="no task left running")


@pytest.mark.skipif(
    settings.TASKS_BACKEND == "rq", reason="RQ's own maintenance fails abandoned jobs"
)
def test_a_task_running_when_its_worker_was_killed_does_not_stay_running(workers):
    """A "Send test e-mail" run killed with its worker (a delivery wake-up is too short to
    catch): the surviving worker on the same machine sees the process is gone."""
    with smtp_server(recorder=Recorder(data_delay=30)) as server:  # answers DATA too late
        point_settings_at(server.host, server.port)
        record = store.load()
        run = SmtpTestRun.objects.create(
            recipient="bob@example.com",
            config={name: getattr(record, name) for name in store.EDITABLE},
            password_token=record.password_token,
        )
        first = workers()
        run_smtp_test.enqueue(run.pk)
        wait_until(lambda: running_tasks() == 1, what="the test e-mail running")
        first.send_signal(signal.SIGKILL)
        first.wait()
        workers()
        wait_until(lambda: running_tasks() == 0, timeout=30, what="no task left running")


# --- Stopping a worker


def test_sigterm_finishes_the_message_in_flight_and_releases_the_rest(workers):
    recorder = Recorder(data_delay=0.3)
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(40)
        worker = workers(OUTBOX_BATCH_SIZE="40")
        wait_until(lambda: len(server.messages) >= 2, what="the first deliveries")
        before = len(server.messages)
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)  # not the whole batch: 40 x 0.3 s would take 12 s
        assert len(server.messages) <= before + 2  # the one in flight (and one just done)
        assert not OutboundEmail.objects.filter(status=Status.FAILED).exists()
        assert not OutboundEmail.objects.filter(status=Status.SENDING).exists()  # released
        recorder.data_delay = 0
        workers()
        wait_until(lambda: sent() == 40, what="the rest delivered by another worker")
    ids = message_ids(server)
    assert len(ids) == 40 and max(ids.values()) == 1


def test_second_sigterm_marks_nothing_failed(workers):
    recorder = Recorder(data_delay=3)
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(10)
        worker = workers(OUTBOX_BATCH_SIZE="10")
        wait_until(lambda: len(server.messages) >= 1, what="the first delivery")
        worker.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # RQ takes a second signal within a second for the same one
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=10)
        assert not OutboundEmail.objects.filter(status=Status.FAILED).exists()
        recorder.data_delay = 0
        workers()
        wait_until(lambda: sent() == 10, timeout=30, what="all 10 delivered")
    ids = message_ids(server)
    assert len(ids) == 10 and sum(ids.values()) - 10 <= 1  # only the one in flight twice
    assert not OutboundEmail.objects.filter(status=Status.FAILED).exists()
