"""On SQLite, the outbox's writers (storing mail, a worker's claims and results) wait their turn
in the kernel's queue (notifications.sqlite_writers) rather than SQLite's sleep-and-retry, but
never from inside a transaction of the caller's, which may hold SQLite's lock already: waiting
there could wait for a writer that waits for that lock."""

from __future__ import annotations

import pytest
from django.db import transaction

from notifications import sqlite_writers
from notifications.models import OutboundEmail
from tests.outbox import in_thread, queue

try:
    import fcntl
except ImportError:  # not on this platform: SQLite's own waiting only
    fcntl = None

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def held_elsewhere():
    """The writers' queue, held through another open file (as another process would hold
    it); call the fixture's value to let it go."""
    path = sqlite_writers.queue_path()
    if path is None:
        pytest.skip("SQLite only: other databases have no writers' queue")
    with open(path, "a+b") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        yield lambda: fcntl.flock(other.fileno(), fcntl.LOCK_UN)
        fcntl.flock(other.fileno(), fcntl.LOCK_UN)


def test_storing_inside_a_callers_transaction_does_not_wait_for_the_queue(held_elsewhere):
    def store_in_a_transaction():
        with transaction.atomic():
            OutboundEmail.objects.exists()
            queue(1)

    with in_thread(store_in_a_transaction) as thread:
        thread.join(30)
        stored = not thread.is_alive()  # the queue is held until after this line
        held_elsewhere()
    assert stored
    assert OutboundEmail.objects.count() == 1


def test_storing_on_its_own_waits_its_turn_in_the_queue(held_elsewhere):
    with in_thread(lambda: queue(1)) as thread:
        thread.join(0.5)
        waiting = thread.is_alive() and not OutboundEmail.objects.exists()
        held_elsewhere()
    assert waiting
    assert OutboundEmail.objects.count() == 1
