"""The outbox under chaos, long: 5,000 messages, 3 workers, several minutes, then the
reconciliation of the database against the SMTP server's durable journal.

    .venv-test/bin/python bench/outbox_chaos.py [--backend db|rq] [--messages 5000] [--workers 3]

Starts a throwaway PostgreSQL (tests/pgcluster.py), with --backend rq a throwaway Redis
(tests/redis_server.py), and the journaling SMTP server (tests/durable_smtp.py) answering 451
to 10% of messages and cutting 2% of connections (half in the middle of DATA, half right after
the final dot, before the 250). Messages arrive in batches of 100 over 4 minutes (--spread)
while a worker is SIGKILLed and restarted about every 5 s and the server goes down for a few
seconds about every 30 s; with rq, Redis is flushed once, a minute in. When every message is
sent or failed, prints the reconciliation table (lost, stranded, duplicates explained or not,
falsely failed, wrong reply kept), the longest an expired lease went unclaimed, and the task
records left. Not part of the suite; it uses the test helpers, so it runs from .venv-test.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("db", "rq"), default="db")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--spread", type=float, default=240, help="seconds over which the messages arrive"
    )
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds, on average")
    parser.add_argument("--outage-every", type=float, default=30.0, help="seconds, on average")
    parser.add_argument("--temporary", type=float, default=0.10, help="rate of 451 replies")
    parser.add_argument("--cuts", type=float, default=0.02, help="rate of cut connections")
    parser.add_argument("--lease", type=int, default=15, help="OUTBOX_LEASE_SECONDS")
    parser.add_argument("--limit", type=float, default=1200, help="give up after (seconds)")
    parser.add_argument("--seed", type=int, default=12)
    options = parser.parse_args()

    from tests.pgcluster import temporary_cluster
    from tests.redis_server import temporary_redis

    with ExitStack() as stack:
        url = stack.enter_context(temporary_cluster())  # with the database the URL names
        os.environ["DATABASE_URL"] = url
        os.environ["TASKS_BACKEND"] = options.backend
        if options.backend == "rq":
            os.environ["REDIS_URL"] = stack.enter_context(temporary_redis())
        os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
        os.environ["OUTBOX_LEASE_SECONDS"] = str(options.lease)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "-v0"],
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return run(options, stack)


def run(options: argparse.Namespace, stack: ExitStack) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.core.mail import EmailMessage, get_connection
    from django.db.models import Min
    from django.utils import timezone

    from notifications.models import OutboundEmail
    from tests.durable_smtp import FINAL, DurableSmtp, kill_worker, outbox_rows, reconcile
    from tests.outbox import OUTBOX, point_settings_at
    from tests.workers import database_url, worker_command

    def pending() -> bool:
        return OutboundEmail.objects.exclude(status__in=FINAL).exists()

    rng = random.Random(options.seed)
    server = stack.enter_context(DurableSmtp())
    server.set(
        seed=options.seed,
        data_451=options.temporary,
        cut_mid_data=options.cuts / 2,
        cut_after_dot=options.cuts / 2,
    )
    point_settings_at(server.host, server.port, timeout=5)
    logs = Path(server.directory)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "OUTBOX_LEASE_SECONDS": str(options.lease),
        "OUTBOX_RETRY_FIRST_DELAY": "1",
    }
    started = 0

    def start() -> subprocess.Popen:
        nonlocal started
        started += 1
        log = open(logs / f"worker-{started}.log", "w")  # noqa: SIM115
        return subprocess.Popen(
            worker_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    running = [start() for _ in range(options.workers)]
    killed: list[int] = []
    outages = flushes = 0
    queued = 0
    longest_expired = 0.0  # the longest an expired lease was seen unclaimed
    begin = time.monotonic()
    next_kill = begin + rng.expovariate(1 / options.kill_every)
    next_outage = begin + rng.expovariate(1 / options.outage_every)
    flush_at = begin + 60 if options.backend == "rq" else None
    up_at = None
    print(
        f"{options.messages:,} messages, {options.workers} workers, backend {options.backend}, "
        f"PostgreSQL, lease {options.lease}s; journal and logs in {logs}",
        flush=True,
    )
    try:
        while time.monotonic() - begin < options.limit:
            now = time.monotonic()
            arrived = options.messages * min(1.0, (now - begin) / options.spread)
            if queued < options.messages and queued < arrived:
                count = min(100, options.messages - queued)
                messages = [
                    EmailMessage(f"Chaos {i}", f"Body {i}", None, [f"c{i}@example.com"])
                    for i in range(queued, queued + count)
                ]
                try:
                    get_connection(OUTBOX).send_messages(messages)
                    queued += count
                except Exception as error:  # the caller must never see this: count it
                    print(f"send_messages raised {error!r} (rows may be committed)", flush=True)
                    queued = OutboundEmail.objects.count()
            elif queued >= options.messages and not pending():
                break
            if now >= next_kill:
                victim = running.pop(rng.randrange(len(running)))
                killed.append(kill_worker(victim))
                running.append(start())
                next_kill = now + rng.expovariate(1 / options.kill_every)
            if up_at is None and now >= next_outage:
                server.down()
                outages += 1
                up_at = now + rng.uniform(2, 6)
            if up_at is not None and now >= up_at:
                server.up()
                up_at = None
                next_outage = now + rng.expovariate(1 / options.outage_every)
            if flush_at is not None and now >= flush_at:
                import django_rq

                django_rq.get_connection().flushall()
                flushes += 1
                flush_at = None
            oldest = OutboundEmail.objects.filter(status="sending").aggregate(m=Min("lease_until"))
            if oldest["m"] is not None:
                longest_expired = max(
                    longest_expired, (timezone.now() - oldest["m"]).total_seconds()
                )
            time.sleep(0.5)
        elapsed = time.monotonic() - begin
        if up_at is not None:
            server.up()
        result = reconcile(
            outbox_rows(),
            server.events(),
            killed=killed,
            now=time.time(),
            grace=options.lease + getattr(settings, "OUTBOX_SWEEP_SECONDS", 0) + 60,
        )
        records = task_records(settings.TASKS_BACKEND)
    finally:
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                kill_worker(process)
    print(
        f"\n{elapsed:,.0f} s; {len(killed)} SIGKILLs, {outages} outages, {flushes} Redis "
        f"flushes; 451 {options.temporary:.0%}, cuts {options.cuts:.0%}\n"
    )
    extra = {
        "longest expired lease unclaimed": f"{longest_expired:>7,.1f} s",
        "task records left": f"{records:>7,}",
    }
    print(result.table(extra))
    if not result.ok:
        print(f"\nNOT OK: {result}")
    return 0 if result.ok else 1


def task_records(backend: str) -> int:
    if backend == "rq":
        import django_rq

        return sum(1 for _ in django_rq.get_connection().scan_iter("rq:job:*"))
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.count()


if __name__ == "__main__":
    sys.exit(main())
