"""Throughput through the outbox with one worker against sending directly, into smtp-sink.

    .venv/bin/python bench/outbox_vs_direct.py [--messages 5000] [--rounds 3]

On the embedded default (SQLite, the database task backend, one `manage.py db_worker`):
(a) StoredSettingsBackend sends the messages directly over one connection;
(b) OutboxBackend stores them (100 per transaction, as a bulk invitation would) and one running
    worker delivers them; timed from the first store to the last message marked sent.
Runs alternate a, b, a, b... and the medians and (b)/(a) are printed. Floor: (b)/(a) >= 0.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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

from django.core.mail import EmailMultiAlternatives  # noqa: E402
from django.db import transaction  # noqa: E402
from django_tasks_db.models import DBTaskResult  # noqa: E402

from bench.smtp_throughput import start_sink_and_point_settings_at_it  # noqa: E402
from notifications.backends import OutboxBackend  # noqa: E402
from notifications.models import OutboundEmail, Status  # noqa: E402
from smtpsettings.backends import StoredSettingsBackend  # noqa: E402

TEXT = ("You have been invited to join Gateway Manager. Follow the link to set a password.\n" * 12)[
    :1000
]
HTML = f"<p>{TEXT}</p>"


def invitations(count: int, round_number: int) -> list[EmailMultiAlternatives]:
    messages = []
    for i in range(count):
        message = EmailMultiAlternatives(
            "You are invited to Gateway Manager", TEXT, None, [f"r{round_number}u{i}@example.com"]
        )
        message.attach_alternative(HTML, "text/html")
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


def through_outbox(count: int, round_number: int) -> tuple[float, float]:
    OutboundEmail.objects.all().delete()
    DBTaskResult.objects.all().delete()
    batch = invitations(count, round_number)
    started = time.perf_counter()
    backend = OutboxBackend()
    for start in range(0, count, 100):
        with transaction.atomic():
            backend.send_messages(batch[start : start + 100])
    stored = time.perf_counter() - started
    while OutboundEmail.objects.filter(status=Status.SENT).count() < count:
        time.sleep(0.02)
    return count / (time.perf_counter() - started), count / stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    sink, _ = start_sink_and_point_settings_at_it()
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, list[float]] = {"a": [], "b": [], "store": []}
    try:
        time.sleep(2)  # the worker is running before anything is timed, as in production
        for round_number in range(1, args.rounds + 1):
            results["a"].append(direct(args.messages, round_number))
            end_to_end, storing = through_outbox(args.messages, round_number)
            results["b"].append(end_to_end)
            results["store"].append(storing)
            print(
                f"round {round_number}: (a) direct {results['a'][-1]:,.0f}/s  "
                f"(b) outbox {end_to_end:,.0f}/s  (storing alone {storing:,.0f}/s)",
                flush=True,
            )
    finally:
        worker.terminate()
        worker.wait(10)
        sink.terminate()
        sink.wait()
    a, b = statistics.median(results["a"]), statistics.median(results["b"])
    print(
        f"\n{args.messages:,} invitation-sized messages (text + HTML), median of {args.rounds} "
        "alternating rounds:"
    )
    print(f"  (a) direct, StoredSettingsBackend    {a:>8,.0f} messages/s")
    print(f"  (b) outbox + one db_worker           {b:>8,.0f} messages/s end to end")
    storing = statistics.median(results["store"])
    print(f"      storing in the outbox alone      {storing:>8,.0f} messages/s")
    print(f"  (b)/(a) = {b / a:.2f}   (floor 0.5)")


if __name__ == "__main__":
    main()
