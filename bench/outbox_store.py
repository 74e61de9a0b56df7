"""How fast OutboxBackend.store() takes many messages in one call (a bulk invitation).

    .venv/bin/python bench/outbox_store.py [--messages 10000] [--rounds 3]
    .venv/bin/python -m tests.pgcluster -- .venv/bin/python bench/outbox_store.py

On the database DATABASE_URL names (SQLite when unset), in one transaction per call, as
H-invites' bulk invitations do: invitation-sized messages (text + HTML), each with a cause.
Prints, per round, the time per message of each step of building one (Django's message(),
its bytes, sealing), the time of the whole call, how much of it building and sealing the
messages took (no SQL), the SQL statements it ran and the rows it wrote; then the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GATEWAYMGR_DATA_DIR", tempfile.mkdtemp(prefix="gatewaymgr-bench-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaymgr.settings")


import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.outbox_vs_direct import invitations  # noqa: E402
from notifications.backends import OutboxBackend, message_bytes  # noqa: E402
from notifications.models import OutboundEmail, seal  # noqa: E402
from smtpsettings import store  # noqa: E402
from smtpsettings.backends import addressed, addressing_of  # noqa: E402


def parts(count: int, round_number: int, cause: User, addressing) -> dict[str, float]:
    """Seconds for each step of building the messages (what _prepare does, without SQL)."""
    messages = [addressed(m, addressing) for m in invitations(count, round_number, cause)]
    started = time.perf_counter()
    mimes = [message.message() for message in messages]
    built = time.perf_counter()
    data = [message_bytes(mime) for mime in mimes]
    written = time.perf_counter()
    for item in data:
        seal(item)
    return {
        "message()": built - started,
        "bytes": written - built,
        "seal": time.perf_counter() - written,
    }


def one_round(count: int, round_number: int, cause: User) -> tuple[float, float, int]:
    messages = invitations(count, round_number, cause)
    backend = OutboxBackend()
    addressing = addressing_of(store.load())
    steps = parts(count, round_number, cause, addressing)
    print(
        "  per message: " + ", ".join(f"{k} {v / count * 1e6:.0f} us" for k, v in steps.items()),
        flush=True,
    )
    started = time.perf_counter()
    for message in invitations(count, round_number, cause):  # the same work, without SQL
        backend._prepare(message, addressing)
    building = time.perf_counter() - started
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        assert len(backend.store(messages)) == count
    return time.perf_counter() - started, building, len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    record = store.load()
    record.sender_email, record.host, record.port = "gateway@example.com", "127.0.0.1", 2525
    record.save()
    cause, _ = User.objects.get_or_create(username="bench-inviter")
    times, builds = [], []
    for round_number in range(1, args.rounds + 1):
        took, building, statements = one_round(args.messages, round_number, cause)
        times.append(took)
        builds.append(building)
        print(
            f"round {round_number}: store() {took:.2f} s ({args.messages / took:,.0f} messages/s),"
            f" building and sealing alone {building:.2f} s, {statements} SQL statements",
            flush=True,
        )
    took, building = statistics.median(times), statistics.median(builds)
    print(
        f"\n{args.messages:,} invitation-sized messages in one store() call on "
        f"{connection.vendor}, median of {args.rounds}: {took:.2f} s "
        f"({args.messages / took:,.0f}/s); SQL share {max(took - building, 0) / took:.0%}; "
        f"outbox now holds {OutboundEmail.objects.count():,} messages"
    )


if __name__ == "__main__":
    main()
