"""The outbox with real worker processes and a real SMTP server: crashes, restarts and
competing workers. Runs on SQLite and on PostgreSQL with the database task backend
(manage.py db_worker), and again on Redis with RQ workers (scripts/test runs it under
`python -m tests.redis_server`, which sets TASKS_BACKEND=rq)."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from notifications.models import OutboundEmail, Status
from tests.outbox import point_settings_at, queue
from tests.smtpservers import Recorder, free_port, smtp_server
from tests.workers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def sent() -> int:
    return OutboundEmail.objects.filter(status=Status.SENT).count()


def message_ids(server) -> Counter:
    return Counter(m.message["Message-ID"] for m in server.messages)


def test_server_down_then_up_delivers_all_exactly_once(workers):
    port = free_port()
    point_settings_at("smtp.gatewaymgr.test", port)
    queue(100)
    workers()
    wait_until(
        lambda: OutboundEmail.objects.filter(attempts__gte=1).count() == 100,
        what="the worker to try all 100 while the server is down",
    )
    assert sent() == 0
    with smtp_server(port=port) as server:
        wait_until(lambda: sent() == 100, what="all 100 delivered")
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
