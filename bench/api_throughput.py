"""POST /api/v1/events throughput: a base commit against the head, side by side in one run.

    .venv-test/bin/python bench/api_throughput.py [--base COMMIT] [--head COMMIT] \
        [--seconds 10] [--rounds 3] [--concurrency 8] [--workers 2]
    .venv-test/bin/python -m tests.pgcluster -- .venv-test/bin/python bench/api_throughput.py

Each commit is checked out into a git worktree of its own and served by real gunicorn (sync
workers, as scripts/run starts it) on its own data directory: SQLite by default, or a database
of its own on the PostgreSQL server of DATABASE_URL. Each gets the migrations, one API token
and one integration that wants api.deployed; its SMTP settings point at a port nobody listens
on, which does not matter: the outbox only stores, and no worker runs. The rate limit is raised
out of reach (API_RATE_LIMIT) but still counts every request.

A client of `--concurrency` threads, each with a keep-alive http.client connection, posts
api.deployed events for `--seconds`, to the base and the head in turn, `--rounds` times (the
order alternates). Printed: requests/s, p50 and p95 latency for each, and head/base; and the
CPU time the gunicorn workers used per request (from /proc), which a busy machine disturbs
less than the rate.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
# The commit before issue 14's API work: the default base.
DEFAULT_BASE = "1e2bb06407cfb3fa44bf1f371ae7535f8a39a2ee"
BIN = Path(sys.executable).parent  # the venv this runs in serves both: .venv-test has it all
EVENT = json.dumps(
    {
        "type": "api.deployed",
        "payload": {"api": "orders", "version": "2.1", "gateway": "gw-eu-1", "environment": "prod"},
    }
).encode()
SETUP = """
from notifications import tokens
from notifications.models import Integration
from smtpsettings import store
record = store.load()
record.sender_email, record.host, record.port = "gateway@example.com", "127.0.0.1", 9
record.save()
Integration.objects.create(name="Ops", recipients=["ops@example.com"], events=["api.deployed"])
Integration.objects.create(name="Other", recipients=["x@example.com"], events=["api.retired"])
print(tokens.create("bench", None)[1])
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def database_url_for(name: str) -> str | None:
    """A database of its own on DATABASE_URL's PostgreSQL server, created empty."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        return None
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))  # DATABASE_URL's may not exist yet
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return urlunsplit(parts._replace(path=f"/{name}"))


@dataclass
class Server:
    name: str
    commit: str
    root: Path
    port: int = 0
    token: str = ""
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, workers: int) -> None:
        if self.commit:
            add = ["worktree", "add", "--detach", str(self.root), self.commit]
            subprocess.run(["git", "-C", str(ROOT), *add], check=True, capture_output=True)
        data = Path(tempfile.mkdtemp(prefix=f"gatewaymgr-api-{self.name}-"))
        self.env = {
            **os.environ,
            "GATEWAYMGR_DATA_DIR": str(data),
            "SECRET_KEY": "bench-" + "x" * 50,
            "API_RATE_LIMIT": "100000000/minute",
            "ALLOWED_HOSTS": "127.0.0.1",
            "PYTHONPATH": str(self.root),
        }
        database = database_url_for(f"bench_api_{self.name}")
        if database:
            self.env["DATABASE_URL"] = database
        python = sys.executable
        for command in (["migrate", "-v0"], ["createcachetable"]):
            self.manage(python, *command)
        self.token = self.manage(python, "shell", "-c", SETUP).strip().splitlines()[-1]
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "gatewaymgr.wsgi",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
                "--chdir",
                str(self.root),
            ],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, _ = post(http.client.HTTPConnection("127.0.0.1", self.port), self.token)
                if status == 202:
                    return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn for {self.name} did not answer")

    def manage(self, python: str, *args: str) -> str:
        done = subprocess.run(
            [python, "manage.py", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise RuntimeError(f"{self.name}: manage.py {args[0]} failed:\n{done.stderr}")
        return done.stdout

    def cpu_seconds(self) -> float:
        """CPU time the gunicorn workers have used so far (user + system)."""
        assert self.process is not None
        total = 0.0
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        for pid in children.read_text().split():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # a worker restarted meanwhile
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
        if self.commit:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(self.root)],
                capture_output=True,
            )
        shutil.rmtree(self.env.get("GATEWAYMGR_DATA_DIR", "/nonexistent"), ignore_errors=True)


def post(connection: http.client.HTTPConnection, token: str) -> tuple[int, bytes]:
    connection.request(
        "POST",
        "/api/v1/events",
        body=EVENT,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    response = connection.getresponse()
    return response.status, response.read()


def load(server: Server, seconds: float, concurrency: int) -> tuple[int, list[float], int, float]:
    """(requests answered 202, their latencies in seconds, other answers, the workers' CPU
    seconds) over `seconds`."""
    cpu_before = server.cpu_seconds()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                status, _ = post(connection, server.token)
            except (OSError, http.client.HTTPException):
                connection.close()
                bad += 1
                continue
            if status == 202:
                mine.append(time.perf_counter() - started)
            else:
                bad += 1
        connection.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies), latencies, errors[0], server.cpu_seconds() - cpu_before


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--head", default="HEAD")
    parser.add_argument(
        "--head-tree", help="serve this directory as it is as the head, e.g. to try a change"
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    def resolve(commit: str) -> str:
        command = ["git", "-C", str(ROOT), "rev-parse", commit]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()

    work = Path(tempfile.mkdtemp(prefix="gatewaymgr-api-bench-"))
    servers = [
        Server("base", resolve(args.base), work / "base"),
        Server("head", "", Path(args.head_tree).resolve())
        if args.head_tree
        else Server("head", resolve(args.head), work / "head"),
    ]
    on_postgresql = os.environ.get("DATABASE_URL", "").startswith("postgres")
    database = "PostgreSQL" if on_postgresql else "SQLite"
    print(
        f"POST /api/v1/events, {database}, gunicorn --workers {args.workers}, concurrency "
        f"{args.concurrency}, {args.rounds} rounds of {args.seconds:g} s each, one matching "
        f"integration; {os.cpu_count()} CPUs"
    )
    results: dict[str, tuple[int, list[float], int, float]] = {}
    cpu: dict[str, float] = {}
    try:
        for server in servers:
            server.start(args.workers)
            print(f"  {server.name}: {server.commit[:10] or server.root} on port {server.port}")
        for server in servers:  # warm up: imports, template and connection caches
            load(server, 2, args.concurrency)
        for round_number in range(args.rounds):
            order = servers if round_number % 2 == 0 else servers[::-1]
            for server in order:
                count, latencies, errors, used = load(server, args.seconds, args.concurrency)
                cpu[server.name] = cpu.get(server.name, 0) + used
                done, all_latencies, all_errors, elapsed = results.get(server.name, (0, [], 0, 0))
                results[server.name] = (
                    done + count,
                    all_latencies + latencies,
                    all_errors + errors,
                    elapsed + args.seconds,
                )
                print(f"  round {round_number + 1} {server.name}: {count / args.seconds:.1f}/s")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rates, cpu_per_request = {}, {}
    for name, (count, latencies, errors, elapsed) in results.items():
        rates[name] = count / elapsed
        cpu_per_request[name] = cpu[name] / count * 1000
        p50, p95 = (percentile(latencies, f) * 1000 for f in (0.5, 0.95))
        print(
            f"{name}: {rates[name]:.1f} requests/s, p50 {p50:.1f} ms, p95 {p95:.1f} ms, mean "
            f"{statistics.mean(latencies) * 1000:.1f} ms, {count} answered 202, {errors} other; "
            f"the workers' CPU {cpu_per_request[name]:.2f} ms per request"
        )
    print(
        f"head/base: {rates['head'] / rates['base']:.2f}x the requests/s; "
        f"{cpu_per_request['base'] / cpu_per_request['head']:.2f}x less CPU per request"
    )


if __name__ == "__main__":
    main()
