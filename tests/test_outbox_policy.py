"""Retry timing and per-recipient bookkeeping, as pure functions."""

import datetime
import random

from notifications.policy import (
    RetryPolicy,
    pending_addresses,
    record_problem,
    record_refusals,
    settle,
)
from smtpsettings.problems import SmtpProblem

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def pending(*addresses):
    return [{"address": a, "status": "pending", "reply": ""} for a in addresses]


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(first_delay=30, max_delay=3600)
    rng = random.Random(7)
    delays = [policy.delay(attempt, rng) for attempt in range(1, 12)]
    for attempt, delay in enumerate(delays, start=1):
        base = min(3600, 30 * 2 ** (attempt - 1))
        assert base / 2 <= delay <= base
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, never in lockstep


def test_retries_stop_after_the_window():
    policy = RetryPolicy(first_delay=30, max_delay=3600, window=datetime.timedelta(hours=24))
    assert policy.next_attempt(T0, T0 + datetime.timedelta(hours=1), 3) is not None
    assert policy.next_attempt(T0, T0 + datetime.timedelta(hours=23, minutes=59), 20) is None


def test_refusals_are_kept_per_recipient():
    state = record_refusals(
        pending("a@x.test", "b@x.test", "c@x.test"),
        {"b@x.test": (550, "5.1.1 No such user"), "c@x.test": (451, "4.2.0 Greylisted")},
    )
    assert [(r["address"], r["status"]) for r in state] == [
        ("a@x.test", "sent"),
        ("b@x.test", "refused"),
        ("c@x.test", "pending"),
    ]
    assert state[1]["reply"] == "550 5.1.1 No such user"
    assert pending_addresses(state) == ["c@x.test"]
    assert settle(state) == "queued"
    final = record_refusals(state, {})
    assert settle(final) == "sent"
    assert final[1]["status"] == "refused"  # a refusal stays on record


def test_a_temporary_problem_leaves_everyone_pending_and_a_permanent_one_fails():
    temporary = SmtpProblem("connect", "down", kind="refused", reply=(0, "refused"), temporary=True)
    state = record_problem(pending("a@x.test"), temporary)
    assert settle(state) == "queued" and state[0]["reply"] == "refused"
    permanent = SmtpProblem("mail", "no", kind="sender-refused", reply=(553, "5.7.1 Not yours"))
    state = record_problem(pending("a@x.test"), permanent)
    assert settle(state) == "failed" and state[0]["reply"] == "553 5.7.1 Not yours"
