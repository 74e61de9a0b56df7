"""The API's rate limit under concurrent requests: each request is counted, so a budget of N lets
exactly N through however many web workers count at once (notifications/ratelimit.py). Threads
with their own database connections stand in for gunicorn's workers, on SQLite and PostgreSQL,
with the cache the product ships with (the database)."""

from __future__ import annotations

import contextlib
import threading

import pytest
from django.core.cache import cache

from notifications import ratelimit
from tests.outbox import in_thread

pytestmark = pytest.mark.django_db(transaction=True)

NOW = 1_800_000_030.0  # one window for every hit, whatever the clock says


@pytest.fixture(autouse=True)
def _fresh_counts():
    cache.clear()
    yield
    cache.clear()


def test_concurrent_requests_are_each_counted_so_exactly_the_budget_gets_through():
    rate = ratelimit.Rate(60, "minute")
    let_through: list[int] = []
    start = threading.Barrier(4)

    def requests():
        start.wait()
        for _ in range(40):
            if ratelimit.hit("token:ci", rate, now=NOW) is None:
                let_through.append(1)

    with contextlib.ExitStack() as threads:
        for _ in range(4):
            threads.enter_context(in_thread(requests))
    assert len(let_through) == 60  # of 160; the cache's incr() let 154 through (SQLite)
    assert ratelimit.blocked("token:ci", rate, now=NOW) is not None
