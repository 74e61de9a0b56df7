"""Delivery semantics under faults, against real SMTP servers (issue 12, items 1, 5 and 6a-b):
a claim is renewed and re-checked before each send, so a batch slower than its lease is not
sent twice; an interruption never fails a message and never leaves the connection in use; a
graceful stop finishes the message in flight and gives back the rest at once; each recipient
keeps its own reply; a server that cannot be reached holds the queue as a whole.

Couriers run in threads of this process against the test database (a file, so each thread has
its own connection), which makes the timing of a lease deterministic enough to reproduce."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass

import pytest
from django.utils import timezone
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty

from notifications.delivery import Courier
from notifications.models import OutboundEmail, Status
from notifications.policy import record_problem, settle
from smtpsettings import store
from smtpsettings.forms import SmtpSettingsForm
from smtpsettings.problems import SmtpProblem
from tests.outbox import in_thread, point_settings_at, queue
from tests.smtpservers import Received, Recorder, free_port, require_test_host, smtp_server
from tests.workers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _test_host(settings):
    require_test_host()
    settings.OUTBOX_RETRY_FIRST_DELAY = 0  # retries are due at once


def message_ids(server) -> Counter:
    return Counter(m.message["Message-ID"] for m in server.messages)


def statuses() -> Counter:
    return Counter(OutboundEmail.objects.values_list("status", flat=True))


# -- 1. a claim is renewed while worked on, and re-checked before each send ------------------


def test_a_batch_slower_than_its_lease_is_sent_once(settings):
    """Two couriers, a 2 s lease and 4 messages a second: the first batch of 12 outlives its
    lease. The second courier must find nothing to take, and nothing arrives twice."""
    settings.OUTBOX_LEASE_SECONDS = 2
    with smtp_server() as server:
        point_settings_at(server.host, server.port, max_per_second=4)
        queue(12)
        with in_thread(lambda: Courier(worker="first").drain(batch_size=12)):
            # Past the first claim's lease (2 s): 10 messages at 4 a second take 2.25 s.
            wait_until(lambda: len(server.messages) >= 10, what="10 messages out")
            Courier(worker="second").drain(batch_size=12)
        ids = message_ids(server)
    assert len(ids) == 12 and max(ids.values()) == 1, ids.most_common(3)
    assert statuses() == {Status.SENT: 12}


def test_a_message_whose_claim_was_lost_is_not_sent(settings):
    """Another worker owns the last five messages now (as after a pause longer than the
    lease): the courier that claimed them first must not send them."""
    with smtp_server() as server:
        point_settings_at(server.host, server.port, max_per_second=4)
        queue(12)
        taken = list(OutboundEmail.objects.order_by("-id").values_list("id", flat=True)[:5])
        with in_thread(lambda: Courier(worker="first").drain(batch_size=12)):
            wait_until(lambda: len(server.messages) >= 2, what="the first messages out")
            OutboundEmail.objects.filter(id__in=taken).update(claimed_by="second")
        ids = set(message_ids(server))
    stolen = set(OutboundEmail.objects.filter(id__in=taken).values_list("message_id", flat=True))
    assert not ids & stolen
    assert len(ids) == 7
    assert set(OutboundEmail.objects.filter(id__in=taken).values_list("status", "claimed_by")) == {
        (Status.SENDING, "second")
    }


# -- 5. interruptions and stops ----------------------------------------------------------------


@dataclass
class StallOnce(Recorder):
    """A server that has taken the first message (recorded) but takes `stall` seconds to say
    so, as a slow server that already queued it would."""

    stall: float = 3.0
    stalled: bool = False

    async def handle_DATA(self, server, session, envelope):
        if self.stalled:
            return await super().handle_DATA(server, session, envelope)
        self.stalled = True
        with self.lock:
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        await asyncio.sleep(self.stall)
        return "250 OK: queued"


@pytest.mark.parametrize(
    "interruption", [JobTimeoutException, SystemExit, KeyboardInterrupt], ids=lambda e: e.__name__
)
def test_an_interrupted_send_fails_nothing_and_leaves_no_connection_in_use(interruption):
    """RQ's job timeout (SIGALRM raising from inside the transport, as RQ's death penalty
    does), SystemExit or KeyboardInterrupt while the server is still answering the first
    message's DATA: no message is marked failed, no 250 is taken for a refusal, and the
    same courier (the next job of an RQ SimpleWorker) delivers both on a new connection."""
    recorder = StallOnce()
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(2)
        courier = Courier(worker="rq")
        with contextlib.suppress(interruption), UnixSignalDeathPenalty(1, interruption):
            courier.drain()
        assert statuses()[Status.FAILED] == 0, list(
            OutboundEmail.objects.values_list("status", "last_error")
        )
        # Given back at once, not left to a lease: held by nobody. A stop charges nobody; a
        # timeout or another exception counts the attempt of the message it interrupted.
        assert not OutboundEmail.objects.exclude(status=Status.SENT).exclude(claimed_by="")
        charged = 1 if issubclass(interruption, Exception) else 0
        assert sorted(OutboundEmail.objects.values_list("attempts", flat=True)) == [0, charged]
        courier.drain()
    assert statuses() == {Status.SENT: 2}
    assert not OutboundEmail.objects.filter(last_error__contains="250")
    assert server.recorder.connections == 2  # the interrupted connection was not reused
    # The first message was interrupted after its final dot: the one explained duplicate.
    assert sorted(message_ids(server).values()) == [1, 2]


def test_a_graceful_stop_finishes_the_message_in_flight_and_releases_the_rest():
    with smtp_server(recorder=Recorder(data_delay=0.2)) as server:
        point_settings_at(server.host, server.port)
        queue(20)
        courier = Courier(worker="stopping")
        with in_thread(lambda: courier.drain(batch_size=20)) as thread:
            wait_until(lambda: len(server.messages) >= 3, what="the first messages out")
            courier.request_stop()
            thread.join(10)
            assert not thread.is_alive()  # the drain returned without waiting for a lease
        delivered = set(message_ids(server))
    sent = set(
        OutboundEmail.objects.filter(status=Status.SENT).values_list("message_id", flat=True)
    )
    assert sent == delivered and 3 <= len(sent) < 20  # the message in flight was finished
    rest = OutboundEmail.objects.exclude(status=Status.SENT)
    assert set(rest.values_list("status", "claimed_by", "attempts")) == {(Status.QUEUED, "", 0)}
    assert not rest.filter(next_attempt_at__gt=timezone.now())  # due at once, for another worker


def test_release_claims_gives_a_workers_messages_back_at_once():
    from notifications.delivery import release_claims

    point_settings_at("smtp.gatewaymgr.test", free_port())
    queue(3)
    OutboundEmail.objects.update(status=Status.SENDING, claimed_by="gone", attempts=1)
    other = OutboundEmail.objects.order_by("id").first()
    OutboundEmail.objects.filter(pk=other.pk).update(claimed_by="alive")
    assert release_claims("gone") == 2
    given_back = OutboundEmail.objects.exclude(pk=other.pk)
    assert set(given_back.values_list("status", "claimed_by", "attempts")) == {
        (Status.QUEUED, "", 1)
    }
    assert not given_back.filter(next_attempt_at__gt=timezone.now())  # due now
    other.refresh_from_db()
    assert (other.status, other.claimed_by) == (Status.SENDING, "alive")


def test_a_250_is_never_a_refusal():
    """A reply out of step (a 250 where 354 was due) says the connection is confused, not
    that the server refused anyone."""
    confused = SmtpProblem(
        "data", "The server refused the DATA step.", kind="data", reply=(250, "2.1.5 Ok")
    )
    state = record_problem([{"address": "a@x.test", "status": "pending", "reply": ""}], confused)
    assert settle(state) == "queued"


# -- 6a. each recipient keeps its own reply ---------------------------------------------------


def test_a_recipient_refused_at_rcpt_keeps_its_reply_when_data_is_refused():
    recorder = Recorder(
        refuse_recipients={"a@example.com": "550 5.1.1 No such user"},
        data_replies=["554 5.7.1 Message rejected as spam"],
    )
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1, recipients=("a@example.com", "b@example.com"))
        Courier().drain()
    email = OutboundEmail.objects.get()
    assert email.status == Status.FAILED
    assert {r["address"]: (r["status"], r["reply"]) for r in email.recipients} == {
        "a@example.com": ("refused", "550 5.1.1 No such user"),
        "b@example.com": ("refused", "554 5.7.1 Message rejected as spam"),
    }


# -- 6b. a server that cannot be reached holds the queue as a whole ----------------------------


def test_an_unreachable_server_holds_the_queue_and_charges_no_message():
    port = free_port()
    point_settings_at("smtp.gatewaymgr.test", port)
    queue(10)
    courier = Courier(worker="patient")
    for _ in range(3):  # three drains during the outage (retries are due at once here)
        courier.drain(batch_size=4)
    waiting = OutboundEmail.objects.all()
    assert set(waiting.values_list("status", "attempts", "claimed_by")) == {(Status.QUEUED, 0, "")}
    assert all(
        "Nothing accepts connections" in e for e in waiting.values_list("last_error", flat=True)
    )
    with smtp_server(port=port) as server:
        courier.drain(batch_size=4)
    assert len(message_ids(server)) == 10 and server.recorder.connections == 1
    assert set(OutboundEmail.objects.values_list("status", "attempts")) == {(Status.SENT, 1)}


def test_an_unreachable_server_defers_every_waiting_message_to_one_time(settings):
    """Backoff belongs to the server, not to each message: after an outage, the whole queue
    waits until the same instant, then goes."""
    settings.OUTBOX_RETRY_FIRST_DELAY = 30
    point_settings_at("smtp.gatewaymgr.test", free_port())
    queue(10)
    Courier().drain(batch_size=4)
    times = set(OutboundEmail.objects.values_list("next_attempt_at", flat=True))
    assert len(times) == 1 and times.pop() > timezone.now()


def test_saving_the_smtp_settings_lets_a_held_queue_go_at_once(settings):
    settings.OUTBOX_RETRY_FIRST_DELAY = 30  # the queue is held for 15 to 30 s
    point_settings_at("smtp.gatewaymgr.test", free_port())
    queue(3)
    courier = Courier()
    courier.drain()
    assert statuses() == {Status.QUEUED: 3}
    with smtp_server() as server:
        form = SmtpSettingsForm(
            {
                "sender_email": "gateway@example.com",
                "host": server.host,
                "port": str(server.port),
                "encryption": "auto",
                "options": '{"auto_tls": false}',
            },
            instance=store.load(),
        )
        assert form.is_valid(), form.errors
        form.save(actor=None, actor_name="test", source="test")  # the administrator fixed it
        courier.drain()
    assert statuses() == {Status.SENT: 3} and len(server.messages) == 3
