"""Throughput through the outbox with one worker against sending directly, into smtp-sink.

    .venv/bin/python bench/outbox_vs_direct.py [--messages 3000] [--rounds 3]
    .venv/bin/python -m tests.pgcluster -- .venv/bin/python bench/outbox_vs_direct.py

On the database DATABASE_URL names (the embedded default, SQLite, when unset), with the
database task backend and one `manage.py outbox_worker` (the worker scripts/run starts):
(a) StoredSettingsBackend sends the messages directly over one connection;
(b) OutboxBackend stores them, 100 per send_messages() call, each call its own transaction as
    the backend makes it (the messages are built before it takes SQLite's write lock), and
    the running worker delivers them; timed from the first store to the last message sent.
    With --caller-transaction each call runs inside a transaction of the caller's instead, so
    the messages are built while it holds the write lock (SQLite lets one writer at a time:
    the worker then waits for each hundred to be stored).
Runs alternate a, b, a, b... and the medians and (b)/(a) are printed. Goal: (b)/(a) >= 0.8.
Then, in this process, the worker's own work is counted: SQL statements per delivered message
(what a Courier's drain executes, claims included) and its rate without the storing beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GATEWAYMGR_DATA_DIR", tempfile.mkdtemp(prefix="gatewaymgr-bench-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaymgr.settings")

import django  # noqa: E402

django.setup()

from django.core.mail import EmailMultiAlternatives  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django_tasks_db.models import DBTaskResult  # noqa: E402

from bench.smtp_throughput import start_sink_and_point_settings_at_it  # noqa: E402
from notifications.backends import OutboxBackend  # noqa: E402
from notifications.delivery import Courier  # noqa: E402
from notifications.models import OutboundEmail, Status  # noqa: E402
from smtpsettings.backends import StoredSettingsBackend  # noqa: E402

TEXT = ("You have been invited to join Gateway Manager. Follow the link to set a password.\n" * 12)[
    :1000
]
HTML = f"<p>{TEXT}</p>"


def invitations(
    count: int, round_number: int, cause: object | None = None
) -> list[EmailMultiAlternatives]:
    """Invitation-sized messages (text + HTML); with `cause`, categorised and linked to it as
    an invitation is."""
    messages = []
    for i in range(count):
        message = EmailMultiAlternatives(
            "You are invited to Gateway Manager", TEXT, None, [f"r{round_number}u{i}@example.com"]
        )
        message.attach_alternative(HTML, "text/html")
        if cause is not None:
            message.outbox_category, message.outbox_cause = "invitation", cause
        messages.append(message)
    return messages


def direct(count: int, round_number: int) -> float:
    batch = invitations(count, round_number)
    started = time.perf_counter()
    backend = StoredSettingsBackend()
    backend.open()
    assert backend.send_messages(batch) == count
    backend.close()
    return count / (time.perf_counter() - started)


def store(batch: list[EmailMultiAlternatives], caller_transaction: bool = False) -> None:
    backend = OutboxBackend()
    for start in range(0, len(batch), 100):
        with transaction.atomic() if caller_transaction else contextlib.nullcontext():
            backend.send_messages(batch[start : start + 100])


def through_outbox(
    count: int, round_number: int, worker: subprocess.Popen, log: Path, caller_transaction: bool
) -> tuple[float, float, int]:
    OutboundEmail.objects.all().delete()
    DBTaskResult.objects.all().delete()
    batch = invitations(count, round_number)
    started = time.perf_counter()
    store(batch, caller_transaction)
    stored = time.perf_counter() - started
    sent_meanwhile = OutboundEmail.objects.filter(status=Status.SENT).count()
    while OutboundEmail.objects.filter(status=Status.SENT).count() < count:
        if worker.poll() is not None:
            sys.exit(f"The worker exited ({worker.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    return count / (time.perf_counter() - started), count / stored, sent_meanwhile


def statements_per_message(count: int) -> tuple[float, float, dict[str, int]]:
    """Drain `count` stored messages in this process (no worker running): statements per
    delivered message by kind (COMMIT included, BEGIN where the driver needs one sent), and
    messages per second."""
    OutboundEmail.objects.all().delete()
    store(invitations(count, 0))
    kinds: Counter[str] = Counter()

    def counted(execute, sql, params, many, context):
        kind = sql.split(None, 1)[0].upper()
        kinds[kind] = kinds.get(kind, 0) + 1
        return execute(sql, params, many, context)

    def commit(original=connection.commit):  # Django commits outside execute()
        kinds["COMMIT"] = kinds.get("COMMIT", 0) + 1
        original()

    courier = Courier(worker="bench:statements")
    started = time.perf_counter()
    if connection.vendor == "sqlite":
        # Some statements go to the driver directly (delivery.commit_sent): SQLite's own trace
        # sees every one, BEGIN and COMMIT included. It repeats a statement (with its values)
        # for each statement of a trigger it fires: a repeat in a row is the same statement.
        connection.ensure_connection()
        last = [""]

        def traced(sql: str) -> None:
            if sql != last[0]:
                kinds[sql.split(None, 1)[0].upper()] += 1
            last[0] = sql

        connection.connection.set_trace_callback(traced)
        try:
            handled = courier.drain()
        finally:
            elapsed = time.perf_counter() - started
            connection.connection.set_trace_callback(None)
    else:
        connection.commit = commit
        try:
            with connection.execute_wrapper(counted):
                handled = courier.drain()
        finally:
            elapsed = time.perf_counter() - started
            del connection.commit
    courier.close()
    assert handled == count, f"drained {handled} of {count}"
    return sum(kinds.values()) / count, count / elapsed, kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--caller-transaction",
        action="store_true",
        help="store each hundred inside a transaction of the caller's (see above)",
    )
    args = parser.parse_args()

    sink, _ = start_sink_and_point_settings_at_it()
    log = Path(tempfile.mkdtemp(prefix="gatewaymgr-bench-")) / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "outbox_worker", "--interval", "0.05"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    results: dict[str, list[float]] = {"a": [], "b": [], "store": [], "meanwhile": []}
    try:
        time.sleep(2)  # the worker is running before anything is timed, as in production
        for round_number in range(1, args.rounds + 1):
            results["a"].append(direct(args.messages, round_number))
            end_to_end, storing, meanwhile = through_outbox(
                args.messages, round_number, worker, log, args.caller_transaction
            )
            results["b"].append(end_to_end)
            results["store"].append(storing)
            results["meanwhile"].append(meanwhile)
            print(
                f"round {round_number}: (a) direct {results['a'][-1]:,.0f}/s  "
                f"(b) outbox {end_to_end:,.0f}/s  (storing {storing:,.0f}/s, "
                f"{meanwhile:,} sent meanwhile)",
                flush=True,
            )
    finally:
        worker.terminate()
        worker.wait(10)
        sink.terminate()
        sink.wait()
    a, b = statistics.median(results["a"]), statistics.median(results["b"])
    print(
        f"\n{args.messages:,} invitation-sized messages (text + HTML) on {connection.vendor}, "
        f"median of {args.rounds} alternating rounds:"
    )
    print(f"  (a) direct, StoredSettingsBackend    {a:>8,.0f} messages/s")
    print(f"  (b) outbox + one outbox_worker       {b:>8,.0f} messages/s end to end")
    storing = statistics.median(results["store"])
    meanwhile = statistics.median(results["meanwhile"])
    shape = "in the caller's transaction" if args.caller_transaction else "one per call"
    print(f"      storing, {shape}: {storing:,.0f} messages/s, {meanwhile:,.0f} sent meanwhile")
    print(f"  (b)/(a) = {b / a:.2f}   (goal 0.8)")

    drained = min(args.messages, 1000)
    sink, _ = start_sink_and_point_settings_at_it()
    try:
        per_message, rate, kinds = statements_per_message(drained)
    finally:
        sink.terminate()
        sink.wait()
    shown = ", ".join(f"{kind} {n / drained:.2f}" for kind, n in kinds.items())
    print(f"  the worker alone, in this process    {rate:>8,.0f} messages/s")
    print(f"  SQL statements per delivered message: {per_message:.2f} ({shown})")


if __name__ == "__main__":
    main()
