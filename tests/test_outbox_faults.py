"""The outbox under faults: real worker processes (tests/workers.py) against an SMTP server that
journals every message before its 250 (tests/durable_smtp.py). Each test ends with the
reconciliation of the database against that journal: nothing lost, nothing stranded, no
duplicate but those a kill or a cut after the final dot explains, nothing failed that the
server did not refuse with a 5xx, and each refused recipient keeps the server's reply to it.

Runs on SQLite and PostgreSQL with db_worker; the tests marked `rq_only` run in the RQ round
(TASKS_BACKEND=rq, under `python -m tests.redis_server`). Randomness is seeded; nothing is timed.
"""

from __future__ import annotations

import os
import random
import signal
import time
from contextlib import suppress

import pytest
from django.conf import settings
from django.core.mail import EmailMessage, get_connection

from notifications.models import DeliveryAttempt, OutboundEmail
from tests.durable_smtp import (
    FINAL,
    DurableSmtp,
    Reconciliation,
    kill_worker,
    outbox_rows,
    reconcile,
)
from tests.outbox import OUTBOX, point_settings_at
from tests.workers import lose_task_queue, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
rq_only = pytest.mark.skipif(
    os.environ.get("TASKS_BACKEND") != "rq", reason="needs Redis (the RQ round of scripts/test)"
)
db_only = pytest.mark.skipif(
    os.environ.get("TASKS_BACKEND") == "rq", reason="the database task backend's tables"
)

LEASE = 2  # OUTBOX_LEASE_SECONDS, as tests/workers.py sets it
SWEEP = 3  # how often each worker sweeps, for these tests
# The worker's own periodic sweep, as tight as the lease so a stranded message shows at once.
ENV = {"OUTBOX_LEASE_SECONDS": str(LEASE), "OUTBOX_SWEEP_SECONDS": str(SWEEP)}
GRACE = LEASE + SWEEP + 5  # a due message may wait this long while a worker lives
SETTLE = 60  # generous: how long to wait for every message to be sent or failed


@pytest.fixture
def server():
    with DurableSmtp() as smtp:
        yield smtp


def queue_unique(count: int, tag: str, per_call: int = 50, recipients: int = 1) -> list[str]:
    """`count` messages, each to addresses of its own (the reconciliation's key)."""
    addresses = []
    for start in range(0, count, per_call):
        messages = []
        for i in range(start, min(count, start + per_call)):
            to = [f"{tag}{i}r{j}@example.com" for j in range(recipients)]
            addresses.extend(to)
            messages.append(EmailMessage(f"{tag} {i}", f"Body {i}", None, to))
        assert get_connection(OUTBOX).send_messages(messages) == len(messages)
    return addresses


def settle(
    server: DurableSmtp, killed=(), timeout: float = SETTLE, grace: float = GRACE
) -> Reconciliation:
    """Wait (bounded) for every message to reach a final state, then reconcile."""
    with suppress(AssertionError):
        wait_until(
            lambda: not OutboundEmail.objects.exclude(status__in=FINAL).exists(),
            timeout=timeout,
            what="every message sent or failed",
        )
    return reconcile(outbox_rows(), server.events(), killed=killed, now=time.time(), grace=grace)


def sent_by(server: DurableSmtp, pid: int) -> int:
    return sum(1 for e in server.events() if e["kind"] == "accepted" and e["pid"] == pid)


def holder_pid() -> int | None:
    """The pid of a worker holding claimed messages right now."""
    holder = OutboundEmail.objects.filter(status="sending").values_list("claimed_by", flat=True)
    holder = next((h for h in holder if h), None)
    return int(holder.rsplit(":", 1)[1]) if holder else None


# -- the reconciliation itself ---------------------------------------------------------------


def row(mid, status="sent", *recipients, attempts=1, due=0.0, lease=None):
    return {
        "message_id": mid,
        "status": status,
        "recipients": list(recipients)
        or [{"address": f"{mid}@x", "status": "sent" if status == "sent" else "pending"}],
        "attempts": attempts,
        "next_attempt_at": due,
        "lease_until": lease,
    }


def accepted(mid, t, pid=1, cut=False, rcpts=None):
    return {
        "kind": "accepted",
        "mid": mid,
        "rcpts": rcpts or [f"{mid}@x"],
        "pid": pid,
        "cut": cut,
        "t": t,
    }


def test_reconcile_counts_each_kind_of_wrong():
    refused = {"address": "f@x", "status": "refused", "reply": "554 no"}
    rows = [
        row("ok"),
        row("lost"),  # the database says sent, the server never got it
        row("stuck", "sending", lease=100.0),  # lease over long ago
        row("later", "queued", due=1000.0),  # a retry not due yet: waiting, not stranded
        row("dup"),
        row("f", "failed", refused),  # no 5xx was ever given to f@x
        row("kill"),
        row("cut"),
    ]
    events = [
        accepted("ok", 1),
        accepted("dup", 2, pid=7),
        accepted("dup", 3, pid=8),
        accepted("kill", 4, pid=9),  # the last 250 worker 9 got before it was killed
        accepted("kill", 5, pid=8),
        accepted("cut", 6, cut=True),  # journaled, then the connection was dropped
        accepted("cut", 7),
    ]
    result = reconcile(rows, events, killed=[9], now=1000.0, grace=10)
    assert result.lost == ["lost"]
    assert result.stranded == ["stuck"] and result.waiting == 1
    assert result.duplicated == ["dup", "kill", "cut"] and result.unexplained == ["dup"]
    assert result.falsely_failed == ["f"]
    assert not result.ok


def test_reconcile_keeps_each_recipients_own_reply():
    rcpt_refused = {"kind": "refused", "stage": "rcpt", "rcpts": ["a@x"], "code": 550, "t": 1}
    data_refused = {"kind": "refused", "stage": "data", "rcpts": ["b@x"], "code": 554, "t": 2}
    recipients = [
        {"address": "a@x", "status": "refused", "reply": "554 Rejected"},
        {"address": "b@x", "status": "refused", "reply": "554 Rejected"},
    ]
    result = reconcile(
        [row("m", "failed", *recipients)], [rcpt_refused, data_refused], now=9, grace=1
    )
    assert result.wrong_reply == ["m"] and not result.falsely_failed
    recipients[0]["reply"] = "550 No such user"
    assert reconcile(
        [row("m", "failed", *recipients)], [rcpt_refused, data_refused], now=9, grace=1
    ).ok


def test_a_kill_explains_only_the_last_message_that_worker_got_a_250_for():
    events = [accepted("a", 1, pid=9), accepted("b", 2, pid=9), accepted("a", 3, pid=8)]
    result = reconcile([row("a"), row("b")], events, killed=[9], now=9, grace=1)
    assert result.unexplained == ["a"]


# -- faults against real workers -------------------------------------------------------------


def test_workers_killed_at_random_instants_lose_and_strand_nothing(workers, server):
    point_settings_at(server.host, server.port)
    server.set(data_delay=0.005)
    queue_unique(300, "kill")
    rng = random.Random(12)
    running = [workers(OUTBOX_BATCH_SIZE="20", **ENV) for _ in range(2)]
    killed = []
    for _ in range(4):
        time.sleep(rng.uniform(0.3, 1.2))
        victim = running.pop(rng.randrange(len(running)))
        killed.append(kill_worker(victim))
        running.append(workers(OUTBOX_BATCH_SIZE="20", **ENV))
    result = settle(server, killed)
    assert result.ok, str(result)
    assert result.delivered == 300 and len(result.duplicated) <= len(killed)


def test_a_worker_killed_before_marking_its_deliveries_sent_sends_none_of_them_again(
    workers, server
):
    # Each delivery is committed alone, as its attempt; the rows are marked Sent together later
    # (here not before the kill: OUTBOX_SETTLE_EVERY is out of reach). The next worker's claim
    # of the dead worker's expired leases marks them Sent instead of sending them again.
    point_settings_at(server.host, server.port)
    server.set(data_delay=0.02)
    queue_unique(40, "unsettled", per_call=40)
    never = {"OUTBOX_SETTLE_EVERY": "1000", "OUTBOX_SETTLE_SECONDS": "3600"}
    first = workers(OUTBOX_BATCH_SIZE="40", **ENV, **never)
    wait_until(
        lambda: DeliveryAttempt.objects.filter(outcome="sent").count() >= 10,
        what="10 deliveries committed",
    )
    killed = [kill_worker(first)]
    unsettled = OutboundEmail.objects.filter(status="sending", history__outcome="sent")
    assert unsettled.count() >= 10
    workers(**ENV)
    result = settle(server, killed)
    assert result.ok, str(result)
    assert result.delivered == 40 and len(result.duplicated) <= 1


def test_a_batch_slower_than_its_lease_is_not_sent_twice(workers, server):
    # 30 messages at 5 per second take 6 s, three times the 2 s lease, with no crash at all.
    point_settings_at(server.host, server.port, max_per_second=5)
    queue_unique(30, "slow", per_call=30)
    workers(OUTBOX_BATCH_SIZE="30", **ENV)
    workers(OUTBOX_BATCH_SIZE="30", **ENV)
    result = settle(server)
    assert result.ok, str(result)
    assert not result.duplicated, str(result)


def test_a_worker_killed_after_its_watchdog_fired_strands_nothing(workers, server):
    # One worker drains 80 messages at 10 per second in batches of 20, each batch well within
    # its 5 s lease; a wake-up scheduled at its first claim (lease + 1 s) is due while the
    # fourth batch is claimed and its lease still runs. A second worker starts (and may run
    # that wake-up: nothing to claim yet), the first is killed, and no new mail arrives.
    env = {**ENV, "OUTBOX_LEASE_SECONDS": "5", "OUTBOX_BATCH_SIZE": "20"}
    point_settings_at(server.host, server.port, max_per_second=10)
    queue_unique(80, "late", per_call=80)
    first = workers(**env)
    wait_until(lambda: len(server.accepted()) >= 70, what="70 of the batches delivered")
    workers(**env)
    killed = [kill_worker(first)]
    result = settle(server, killed, grace=5 + SWEEP + 5)
    assert result.ok, str(result)
    assert result.delivered == 80


def test_sigterm_finishes_the_message_in_flight_and_releases_the_rest(workers, server):
    point_settings_at(server.host, server.port)
    server.set(data_delay=0.3)
    queue_unique(40, "term", per_call=40)
    worker = workers(OUTBOX_BATCH_SIZE="40", **ENV)
    wait_until(lambda: len(server.accepted()) >= 2, what="the first deliveries")
    worker.send_signal(signal.SIGTERM)
    before = sent_by(server, worker.pid)  # read after the signal: never counts one too many
    worker.wait(SETTLE)
    # It finished at most the message in flight, and left nothing claimed behind it.
    assert sent_by(server, worker.pid) - before <= 1
    assert not OutboundEmail.objects.filter(status="sending").exists()
    server.set(data_delay=0)
    workers(**ENV)
    result = settle(server)
    assert result.ok, str(result)
    assert result.delivered == 40 and not result.duplicated


def test_sigterm_twice_marks_nothing_failed(workers, server):
    point_settings_at(server.host, server.port)
    server.set(data_delay=1.0)  # each message waits a second for its 250: stopped mid-send
    queue_unique(10, "twice", per_call=10)
    worker = workers(**ENV)
    wait_until(lambda: len(server.accepted()) >= 1, what="the first delivery")
    worker.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.send_signal(signal.SIGTERM)
    worker.wait(SETTLE)
    assert OutboundEmail.objects.filter(status="failed").count() == 0
    server.set(data_delay=0)
    workers(**ENV)
    result = settle(server, killed=[worker.pid])  # a forced stop may cut between 250 and commit
    assert result.ok, str(result)
    assert result.failed == 0 and result.delivered == 10


def test_server_down_stalled_cutting_and_refusing(workers, server):
    point_settings_at(server.host, server.port, timeout=1)
    server.down()
    queue_unique(150, "chaos")
    workers(OUTBOX_BATCH_SIZE="25", **ENV)
    workers(OUTBOX_BATCH_SIZE="25", **ENV)
    time.sleep(1)  # the workers find the door closed
    server.set(
        down=False,
        seed=7,
        cut_mid_data=0.04,
        cut_after_dot=0.03,
        data_451=0.1,
        data_554=0.02,
        rcpt_450=0.03,
        rcpt_550=0.03,
    )
    wait_until(lambda: len(server.accepted()) >= 50, what="deliveries after the outage")
    server.stall(3)  # accepts connections, says nothing: past the 1 s timeout
    time.sleep(1)
    server.down()
    time.sleep(1)
    server.up()
    result = settle(server)
    assert result.ok, str(result)
    assert result.failed > 0 and result.delivered + result.failed == 150  # the 5xx failed


def test_an_outage_charges_no_message_an_attempt(workers, server):
    point_settings_at(server.host, server.port)
    server.down()
    queue_unique(30, "outage", per_call=30)
    workers(**ENV)
    time.sleep(3)  # many drains with OUTBOX_RETRY_FIRST_DELAY=0.2 while nobody answers
    server.up()
    result = settle(server)
    assert result.ok, str(result)
    assert result.max_attempts <= 1, str(result)


def test_a_recipient_refused_at_rcpt_keeps_its_own_reply(workers, server):
    point_settings_at(server.host, server.port)
    server.set(
        rcpt_replies={"rcpt0r0@example.com": "550 5.1.1 No such user"},
        data_replies={"rcpt0r1@example.com": "554 5.7.1 Message rejected"},
    )
    queue_unique(1, "rcpt", recipients=2)
    workers(**ENV)
    result = settle(server)
    assert result.ok, str(result)
    replies = {r["address"]: r["reply"] for r in OutboundEmail.objects.get().recipients}
    assert replies["rcpt0r0@example.com"].startswith("550")
    assert replies["rcpt0r1@example.com"].startswith("554")


@db_only
def test_task_records_stay_bounded(workers, server):
    from django_tasks_db.models import DBTaskResult

    point_settings_at(server.host, server.port)
    for i in range(100):  # a hundred callers, each enqueuing its own wake-up
        queue_unique(1, f"task{i}-")
    workers(**ENV)
    result = settle(server)
    assert result.ok, str(result)
    assert DBTaskResult.objects.count() < 50  # not one task run per message


# -- the task queue loses its data ------------------------------------------------------


def redis():
    import redis as redis_client

    return redis_client.Redis.from_url(settings.RQ_QUEUES["default"]["URL"])


def test_the_task_queue_losing_everything_strands_nothing(workers, server):
    # Every message gets a 451 and waits for its retry, which only the task queue would
    # remember; then the queue loses every job (Redis flushed, or the task rows deleted) and
    # the server recovers. No new mail arrives to wake anyone.
    point_settings_at(server.host, server.port)
    server.set(data_451=1.0)
    queue_unique(60, "flush", per_call=60)
    for _ in range(2):
        workers(OUTBOX_RETRY_FIRST_DELAY="3", **ENV)

    def all_answered() -> bool:
        refused = {r for e in server.events() if e["kind"] == "refused" for r in e["rcpts"]}
        return len(refused) == 60 and not OutboundEmail.objects.filter(status="sending").exists()

    wait_until(all_answered, what="a 451 to each message, recorded")
    time.sleep(0.5)  # the drain ends and leaves its wake-up for the retries in the queue
    lose_task_queue()
    server.set(data_451=0)
    result = settle(server)
    assert result.ok, str(result)
    assert result.delivered == 60


@rq_only
def test_a_failed_enqueue_does_not_fail_the_caller(workers, server):
    point_settings_at(server.host, server.port)
    workers(**ENV)
    client = redis()
    client.config_set("min-replicas-to-write", 1)  # Redis refuses every write now
    try:
        queue_unique(5, "noenq", per_call=1)  # the rows are committed: no exception
    finally:
        client.config_set("min-replicas-to-write", 0)
    assert OutboundEmail.objects.count() == 5
    result = settle(server)
    assert result.ok, str(result)
    assert result.delivered == 5
