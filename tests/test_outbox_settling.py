"""A delivery is committed as its "sent" attempt alone, at once; the message's row is marked Sent
later, with others (notifications.delivery.commit_sent and settle_sent). Between the two the
message is sent for every path that could otherwise send it again: a claim of its expired lease,
a worker giving its messages back, a server outage holding the queue. Each of them settles it.

Runs on SQLite and PostgreSQL, against a real SMTP server where one is sent to."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from notifications.delivery import (
    Accepted,
    Courier,
    claim,
    commit_sent,
    hold_queue,
    release_claims,
    settle_sent,
)
from notifications.models import DeliveryAttempt, OutboundBody, OutboundEmail, Status
from smtpsettings.problems import SmtpProblem
from tests.outbox import point_settings_at, queue
from tests.smtpservers import smtp_server

pytestmark = pytest.mark.django_db(transaction=True)


def accepted_by(worker: str, email: OutboundEmail) -> datetime.datetime:
    """Commit `email`'s acceptance for `worker`, as the courier does after a 250."""
    at = timezone.now()
    attempt = {"at": at, "worker": worker, "outcome": "sent", "step": "data", "reply": "250 Ok"}
    assert commit_sent(worker, email.pk, attempt, None) == (True, False)
    return at


def expire_leases() -> None:
    OutboundEmail.objects.update(lease_until=timezone.now() - datetime.timedelta(minutes=1))


def row(email: OutboundEmail) -> OutboundEmail:
    return OutboundEmail.objects.get(pk=email.pk)


def test_an_accepted_message_is_settled_not_claimed_again_when_its_lease_runs_out():
    queue(2)
    first, second = claim("dead", 10)
    at = accepted_by("dead", first)
    assert row(first).status == Status.SENDING  # committed, not settled: the worker dies here
    expire_leases()

    taken = claim("next", 10)

    assert [e.pk for e in taken] == [second.pk]  # the other one is sent again, this one not
    settled = row(first)
    assert (settled.status, settled.sent_at, settled.claimed_by) == (Status.SENT, at, "")
    assert [r["status"] for r in settled.recipients] == ["sent"]
    assert not OutboundBody.objects.filter(email_id=first.pk).exists()  # dropped, as when sent


def test_giving_messages_back_settles_the_accepted_ones_instead_of_queueing_them():
    queue(2)
    first, second = claim("stopping", 10)
    accepted_by("stopping", first)

    assert release_claims("stopping") == 1

    assert row(first).status == Status.SENT
    assert row(second).status == Status.QUEUED


def test_an_outage_holds_back_the_queue_but_not_an_accepted_message():
    queue(2)
    first, second = claim("cut-off", 10)
    accepted_by("cut-off", first)
    problem = SmtpProblem("connect", "Connection refused", kind="unreachable")

    hold_queue("cut-off", problem)

    assert row(first).status == Status.SENT
    assert row(second).status == Status.QUEUED


def test_an_acceptance_is_not_committed_for_a_message_that_is_no_longer_ours():
    queue(1)
    (email,) = claim("slow", 10)
    OutboundEmail.objects.filter(pk=email.pk).update(claimed_by="thief")
    attempt = {"at": timezone.now(), "worker": "slow", "outcome": "sent", "reply": "250 Ok"}

    assert commit_sent("slow", email.pk, attempt, None) == (False, False)
    assert not DeliveryAttempt.objects.exists()
    settle_sent("slow", [Accepted(email.pk, email.recipients, timezone.now())])
    assert (row(email).status, row(email).claimed_by) == (Status.SENDING, "thief")


def test_a_drain_leaves_every_delivered_message_settled(settings):
    settings.OUTBOX_SETTLE_EVERY = 3  # settled in groups of 3 within the batch, then the rest
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        queue(8)
        assert Courier(worker="groups").drain() == 8
    assert len(server.messages) == 8
    assert set(OutboundEmail.objects.values_list("status", "claimed_by")) == {(Status.SENT, "")}
    assert DeliveryAttempt.objects.filter(outcome="sent").count() == 8
    assert not OutboundBody.objects.exists()
