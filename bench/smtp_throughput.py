"""Throughput over one SMTP connection into Postfix's smtp-sink, measured side by side.

    .venv/bin/python bench/smtp_throughput.py [--messages 5000] [--rounds 5]

(a) Django's own SMTP backend, (b) StoredSettingsBackend with equivalent stored settings,
(c) Postfix's `smtp-source -d` as the ceiling, and (d) StoredSettingsBackend as it was before
the next message's envelope travelled with the previous final dot (RFC 2920 3.1): each MAIL
waited for the reply to the dot before it. Runs alternate a, b, c, d, a, b, c, d... so that
machine noise hits all of them alike; the medians and their ratios are printed, and the
median of each round's own (b)/(c), which is steadier on a busy machine. smtp-sink runs on
CPU 0 and the clients on CPU 1 (--unpinned: wherever the scheduler puts them; see main()).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
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

from django.core.mail import EmailMessage  # noqa: E402
from django.core.mail.backends.smtp import EmailBackend as DjangoSmtpBackend  # noqa: E402
from django.core.management import call_command  # noqa: E402

from smtpsettings import store  # noqa: E402
from smtpsettings.backends import StoredSettingsBackend  # noqa: E402

BODY = ("Gateway Manager benchmark line of text, sixty-four characters.\n" * 32)[:2048]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sink(port: int, cpu: int | None = None) -> subprocess.Popen:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not Path(sink).exists():
        sys.exit("smtp-sink is not installed: apt-get install postfix")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    process = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "256"], preexec_fn=pin)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    sys.exit("smtp-sink did not start")


def start_sink_and_point_settings_at_it(cpu: int | None = None) -> tuple[subprocess.Popen, int]:
    """Migrate, start smtp-sink on a free port (on CPU `cpu` alone if given), and aim the
    stored settings at it."""
    call_command("migrate", verbosity=0)
    port = free_port()
    sink = start_sink(port, cpu)
    record = store.load()
    record.sender_email, record.host, record.port = "gateway@example.com", "127.0.0.1", port
    record.options = {"restart_threshold": 0}  # one connection, as smtp-source -d uses
    record.save()
    return sink, port


class WithoutLookahead(StoredSettingsBackend):
    """(d): no message is built before the previous one is sent, so no envelope goes ahead."""

    def _try_outgoing(self, message):
        return None


def messages(count: int) -> list[EmailMessage]:
    return [
        EmailMessage(f"Benchmark {i}", BODY, None, [f"user{i}@example.com"]) for i in range(count)
    ]


def run_backend(backend, count: int) -> float:
    batch = messages(count)
    started = time.perf_counter()
    backend.open()
    sent = backend.send_messages(batch)
    backend.close()
    elapsed = time.perf_counter() - started
    assert sent == count, f"{type(backend).__name__} sent {sent} of {count}"
    return count / elapsed


def run_smtp_source(port: int, count: int) -> float:
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    started = time.perf_counter()
    subprocess.run(
        [
            source,
            "-d",
            "-m",
            str(count),
            "-l",
            str(len(BODY)),
            "-f",
            "gateway@example.com",
            "-t",
            "user@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
    )
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--unpinned", action="store_true", help="let the scheduler place the sink and clients"
    )
    args = parser.parse_args()

    # The sink on one CPU, the clients on another, as a relay on another machine would be. On
    # the same CPU a round trip costs next to nothing, and smtp-source's four per message ran at
    # ~13,000 messages/s or ~4,500 depending on where the scheduler happened to put it.
    pinned = not args.unpinned and len(os.sched_getaffinity(0)) >= 2
    sink, port = start_sink_and_point_settings_at_it(cpu=0 if pinned else None)
    if pinned:
        os.sched_setaffinity(0, {1})  # this process, and smtp-source started from it
    try:
        runs = {
            "a": lambda: run_backend(
                DjangoSmtpBackend(host="127.0.0.1", port=port, use_tls=False), args.messages
            ),
            "b": lambda: run_backend(StoredSettingsBackend(), args.messages),
            "c": lambda: run_smtp_source(port, args.messages),
            "d": lambda: run_backend(WithoutLookahead(), args.messages),
        }
        results: dict[str, list[float]] = {key: [] for key in runs}
        for round_number in range(1, args.rounds + 1):
            for key, run in runs.items():
                results[key].append(run())
            print(
                f"round {round_number}: "
                + "  ".join(f"({k}) {v[-1]:,.0f}/s" for k, v in results.items()),
                flush=True,
            )
    finally:
        sink.terminate()
        sink.wait()

    median = {key: statistics.median(values) for key, values in results.items()}
    print(
        f"\n{args.messages:,} messages of {len(BODY):,} bytes over one connection, "
        f"median of {args.rounds} alternating rounds:"
    )
    print(f"  (a) Django SMTP backend      {median['a']:>9,.0f} messages/s")
    print(f"  (b) StoredSettingsBackend    {median['b']:>9,.0f} messages/s")
    print(f"  (c) smtp-source -d (ceiling) {median['c']:>9,.0f} messages/s")
    print(f"  (d) (b) without envelope ahead {median['d']:>7,.0f} messages/s")
    per_round = statistics.median(b / c for b, c in zip(results["b"], results["c"], strict=True))
    print(f"  (b)/(a) = {median['b'] / median['a']:.2f}   (floor 1.0)")
    print(f"  (b)/(c) = {median['b'] / median['c']:.2f}   (goal 0.9); per round: {per_round:.2f}")
    print(f"  (d)/(c) = {median['d'] / median['c']:.2f}   (before the envelope went ahead)")
    print(f"  (b)/(d) = {median['b'] / median['d']:.2f}")


if __name__ == "__main__":
    main()
