"""The delivery loop's clock (notifications.worker.seconds_to_wait), free of I/O."""

from __future__ import annotations

import datetime

from notifications.worker import seconds_to_wait

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


def at(seconds: float) -> datetime.datetime:
    return NOW + datetime.timedelta(seconds=seconds)


def test_nothing_waiting_sleeps_one_sweep_interval():
    assert seconds_to_wait(NOW, None, None, 20, found_nothing=True) == 20


def test_wakes_when_the_next_retry_is_due_or_a_lease_runs_out():
    assert seconds_to_wait(NOW, at(5), None, 20, found_nothing=False) == 5
    assert seconds_to_wait(NOW, at(15), at(3), 20, found_nothing=False) == 3.1  # just past it


def test_never_sleeps_longer_than_the_sweep_interval():
    assert seconds_to_wait(NOW, at(3600), at(600), 20, found_nothing=False) == 20


def test_mail_due_after_a_busy_drain_goes_at_once():
    assert seconds_to_wait(NOW, at(-2), None, 20, found_nothing=False) == 0


def test_mail_that_looks_due_but_could_not_be_claimed_is_not_polled_in_a_spin():
    assert seconds_to_wait(NOW, at(-2), None, 20, found_nothing=True) == 1
