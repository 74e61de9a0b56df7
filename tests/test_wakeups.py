"""Delivery wake-ups do not multiply (issue 14): at most one waits at a time, whoever rings,
and a worker with retries waiting but nothing due records no task. Counted in the task
queue, not timed; bench/wakeups.py measures it under an API burst."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.mail import EmailMessage
from django.db import connection
from django.utils import timezone

from notifications import tasks
from notifications.backends import OutboxBackend
from notifications.models import OutboundEmail, Status
from tests.outbox import point_settings_at
from tests.smtpservers import smtp_server
from tests.workers import lose_task_queue, pending_wake_ups, task_records, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_processes_committing_mail_at_once_leave_one_wake_up_waiting(monkeypatch):
    """Two web workers commit mail at the same moment. Each looks for a waiting wake-up,
    finds none, and queues one: two waited, and two task runs followed, for one purpose."""
    lose_task_queue()
    both_looked = threading.Barrier(2, timeout=10)
    looked = threading.local()
    look = tasks.wake_up_waiting

    def look_then_meet() -> bool:
        waiting = look()
        if not getattr(looked, "once", False):  # the first look of each: the two interleave
            looked.once = True
            both_looked.wait()
        return waiting

    monkeypatch.setattr(tasks, "wake_up_waiting", look_then_meet)
    errors: list[BaseException] = []

    def web_worker() -> None:
        try:
            tasks.ring()  # what the outbox does once its transaction committed
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=web_worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert pending_wake_ups() == 1


def test_a_worker_with_retries_waiting_records_no_task_while_nothing_is_due(workers):
    """The burst of the issue, small: mail committed one message at a time while retries
    wait for later. Tasks are recorded for the commits only (never more than one each), and
    once everything is sent, no task is recorded however many sweeps pass."""
    lose_task_queue()
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        OutboxBackend().store(
            [EmailMessage(f"Retry {i}", "", None, ["later@example.com"]) for i in range(20)]
        )
        OutboundEmail.objects.update(
            attempts=1, next_attempt_at=timezone.now() + timezone.timedelta(hours=1)
        )
        workers(OUTBOX_SWEEP_SECONDS="0.2")
        for i in range(30):  # each its own commit: 30 rings
            OutboxBackend().store([EmailMessage(f"New {i}", "", None, ["bob@example.com"])])
        wait_until(lambda: len(server.messages) == 30, what="the 30 new messages sent")
        assert pending_wake_ups() <= 1
        after_burst = task_records()
        assert after_burst <= 30
        # Nothing is due for an hour. Whatever many sweeps pass meanwhile (one every 0.2 s),
        # no task is recorded: observed over a while, asserted without a clock.
        time.sleep(3)
        assert task_records() == after_burst
    assert OutboundEmail.objects.filter(status=Status.QUEUED).count() == 20
