"""Delivery tasks under an API burst while retries wait: do they multiply, and does the worker
go idle when nothing is due? (issue 14, "Delivery tasks must not multiply")

    .venv-test/bin/python bench/wakeups.py [--server 451|silent] [--requests 10000] \
        [--retries 2800] [--workers 1] [--after 60]
    .venv-test/bin/python -m tests.pgcluster -- .venv-test/bin/python bench/wakeups.py

The product as scripts/run runs it, from this working tree: gunicorn (2 workers) for the API and
`manage.py outbox_worker` (the database task backend), on SQLite in a data directory of its own,
or on a database of its own on DATABASE_URL's PostgreSQL server. Its SMTP server answers every
RCPT with 451 (`--server 451`), or accepts connections and never says a word (`silent`, with a
5 s timeout). Before the burst, `--retries` messages wait for a retry due in 10 to 20 minutes.

Then `--requests` events are posted to the API (each one commit storing one message) at
concurrency 8, and the run goes on for `--after` seconds. Every half second it samples the
task table: the delivery tasks recorded since the start (each a task run, or one waiting to
run), and how many wait to run (pending wake-ups). And whenever no message is due (the
breaker may hold them all) or being sent, it counts that half second as "nothing due", with
the task records and the workers' CPU time (from /proc) of those moments: an idle worker
records no task and uses next to no CPU.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.api_throughput import EVENT, database_url_for, free_port  # noqa: E402

BIN = Path(sys.executable).parent
SETUP = """
import datetime, random
from django.core.mail import EmailMessage
from django.utils import timezone
from notifications import tokens
from notifications.backends import OutboxBackend
from notifications.models import Integration, OutboundEmail
from smtpsettings import store
record = store.load()
record.sender_email, record.host, record.port = "gateway@example.com", "127.0.0.1", {port}
record.options = {{"auto_tls": False, "timeout": 5}}
record.save()
Integration.objects.create(name="Ops", recipients=["ops@example.com"], events=["api.deployed"])
later = ["later@example.com"]
retries = [EmailMessage(f"Retry {{i}}", "", None, later) for i in range({retries})]
OutboxBackend().store(retries)
now = timezone.now()
for pk in OutboundEmail.objects.values_list("pk", flat=True):
    later = now + datetime.timedelta(seconds=random.uniform(600, 1200))
    OutboundEmail.objects.filter(pk=pk).update(attempts=1, next_attempt_at=later)
print(tokens.create("bench", None)[1])
"""
SAMPLE = """
import sys, time
from django.db.models import Min
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from notifications.delivery import breaker
from notifications.models import OutboundEmail, Status
from notifications.tasks import deliver_outbox
start = timezone.now()
tasks = DBTaskResult.objects.filter(task_path=deliver_outbox.module_path, enqueued_at__gte=start)
for line in sys.stdin:
    queued = OutboundEmail.objects.filter(status=Status.QUEUED)
    now, held = timezone.now(), breaker()  # an unreachable server holds the whole queue
    due = not (held and held.until and held.until > now)
    due = due and queued.filter(next_attempt_at__lte=now).exists()
    sending = OutboundEmail.objects.filter(status=Status.SENDING).exists()
    print(tasks.count(), tasks.filter(status="READY").count(), int(due or sending),
          queued.count(), OutboundEmail.objects.count(), flush=True)
"""


class SmtpHandler(socketserver.StreamRequestHandler):
    """A server that is there but defers every recipient: 451 to each RCPT."""

    def handle(self) -> None:
        self.wfile.write(b"220 bench ESMTP\r\n")
        for line in self.rfile:
            verb = line[:4].upper()
            if verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            reply = {
                b"EHLO": b"250-bench\r\n250 8BITMIME\r\n",
                b"RCPT": b"451 4.7.1 Try again later\r\n",
                b"DATA": b"503 5.5.1 No valid recipients\r\n",
            }.get(verb, b"250 OK\r\n")
            self.wfile.write(reply)


class SilentHandler(socketserver.BaseRequestHandler):
    """A server that accepts the connection and never says a word."""

    def handle(self) -> None:
        self.request.settimeout(120)
        try:
            while self.request.recv(4096):
                pass
        except OSError:
            pass


class ThreadingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@dataclass
class Product:
    env: dict[str, str]
    data: Path
    processes: list[subprocess.Popen]

    def manage(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stderr}")
        return done.stdout

    def start(self, command: list[str], log: str) -> subprocess.Popen:
        output = open(self.data / log, "w")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def burst(port: int, token: str, requests: int, concurrency: int) -> tuple[int, int, float]:
    """Post `requests` events; (accepted, refused or failed, seconds)."""
    counter = iter(range(requests))
    lock = threading.Lock()
    outcome = [0, 0]
    started = time.monotonic()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            try:
                connection.request("POST", "/api/v1/events", body=EVENT, headers=headers)
                response = connection.getresponse()
                response.read()
                ok = response.status == 202
            except (OSError, http.client.HTTPException):
                connection.close()
                ok = False
            with lock:
                outcome[0 if ok else 1] += 1
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome[0], outcome[1], time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=["451", "silent"], default="451")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--retries", type=int, default=2_800)
    parser.add_argument("--workers", type=int, default=1, help="outbox_worker processes")
    parser.add_argument("--after", type=float, default=60, help="seconds to watch after")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeline", action="store_true", help="print every sample too")
    parser.add_argument(
        "--retry-delay",
        default="600",
        help="OUTBOX_RETRY_FIRST_DELAY: the burst's 451s wait this long, so that after its "
        "first attempts nothing is due and the worker may go idle (the product's default: 30)",
    )
    args = parser.parse_args()

    handler = SmtpHandler if args.server == "451" else SilentHandler
    smtp = ThreadingServer(("127.0.0.1", 0), handler)
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    data = Path(tempfile.mkdtemp(prefix="gatewaymgr-wakeups-"))
    env = {
        **os.environ,
        "GATEWAYMGR_DATA_DIR": str(data),
        "SECRET_KEY": "bench-" + "x" * 50,
        "API_RATE_LIMIT": "100000000/minute",
        "ALLOWED_HOSTS": "127.0.0.1",
        "TASKS_BACKEND": "db",
        "OUTBOX_RETRY_FIRST_DELAY": args.retry_delay,
    }
    database = database_url_for("bench_wakeups")
    if database:
        env["DATABASE_URL"] = database
    product = Product(env, data, [])
    port = free_port()
    try:
        product.manage("migrate", "-v0")
        product.manage("createcachetable")
        setup = SETUP.format(port=smtp.server_address[1], retries=args.retries)
        token = product.manage("shell", "-c", setup).strip().splitlines()[-1]
        workers = [
            product.start([sys.executable, "manage.py", "outbox_worker"], f"worker-{n}.log")
            for n in range(args.workers)
        ]
        product.start(
            [
                str(BIN / "gunicorn"),
                "gatewaymgr.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
            ],
            "gunicorn.log",
        )
        wait_for(port)
        sampler = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-c", SAMPLE],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        report = watch(args, sampler, [w.pid for w in workers], port, token)
        sampler.stdin.close()
        sampler.wait(10)
    finally:
        product.stop()
        smtp.shutdown()
        shutil.rmtree(data, ignore_errors=True)
    on = "PostgreSQL" if database else "SQLite"
    print(
        f"{on}, SMTP server: {args.server}, {args.workers} outbox_worker, {args.retries} "
        f"retries waiting, OUTBOX_RETRY_FIRST_DELAY={args.retry_delay}"
    )
    for line in report:
        print(line)


def wait_for(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("gunicorn did not start")


def read_sample(sampler: subprocess.Popen) -> list[int]:
    while True:
        line = sampler.stdout.readline()
        if not line:
            raise RuntimeError("the sampler stopped")
        fields = line.split()
        if len(fields) == 5 and all(f.isdigit() for f in fields):  # not the shell's banner
            return [int(f) for f in fields]


def watch(args, sampler: subprocess.Popen, workers: list[int], port: int, token: str) -> list[str]:
    """Run the burst while sampling; the lines of the report."""
    samples: list[tuple[float, int, int, int, int, int, float]] = []
    finished = threading.Event()
    result: list = []

    def run_burst() -> None:
        result.extend(burst(port, token, args.requests, args.concurrency))
        finished.set()

    started = time.monotonic()
    threading.Thread(target=run_burst, daemon=True).start()
    burst_end = None
    while True:
        now = time.monotonic()
        if finished.is_set() and burst_end is None:
            burst_end = now
        if burst_end is not None and now - burst_end >= args.after:
            break
        sampler.stdin.write("\n")
        sampler.stdin.flush()
        tasks, pending, busy, queued, total = read_sample(sampler)
        samples.append((now - started, tasks, pending, busy, queued, total, cpu_seconds(workers)))
        time.sleep(max(0.0, 0.5 - (time.monotonic() - now)))
    accepted, failed, seconds = result
    idle_seconds = idle_tasks = 0.0
    idle_cpu = 0.0
    for before, after in itertools.pairwise(samples):
        if not before[3] and not after[3]:  # nothing due or being sent at either end
            idle_seconds += after[0] - before[0]
            idle_tasks += after[1] - before[1]
            idle_cpu += after[6] - before[6]
    last = samples[-1]
    lines = []
    if args.timeline:
        lines += ["  s  tasks pending busy queued stored cpu"] + [
            f"{s[0]:5.1f} {s[1]} {s[2]} {s[3]} {s[4]} {s[5]} {s[6]:.2f}" for s in samples
        ]
    lines += [
        f"burst: {accepted} events accepted ({failed} not) in {seconds:.0f} s "
        f"({accepted / seconds:.0f}/s), each one commit storing one message",
        f"delivery tasks recorded during the burst and {args.after:g} s after: {last[1]} "
        f"({last[1] / max(accepted, 1):.2f} per commit); most waiting at once: "
        f"{max(s[2] for s in samples)}",
        f"messages: {last[5]} stored, {last[4]} waiting for a retry at the end",
        f"nothing due for {idle_seconds:.0f} s: {idle_tasks:.0f} task(s) recorded then, the "
        f"workers' CPU {idle_cpu / max(idle_seconds, 0.001) * 100:.1f}% of one core",
    ]
    return lines


if __name__ == "__main__":
    main()
