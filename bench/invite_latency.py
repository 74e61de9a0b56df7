"""Request latency of a view that sends an invitation-sized e-mail while the SMTP server
accepts connections but never answers.

    .venv/bin/python bench/invite_latency.py [--requests 200] [--stock-requests 5]

(a) the product's outbox backend (the message is stored; a worker would send it later);
(a') the product's own invitation: the invitation row, its token and its e-mail in the outbox;
(b) Django's stock synchronous SMTP backend with a 2 s timeout, for comparison: each of its
    requests waits for the timeout, so it gets only a few requests.
The real WSGI application is served by wsgiref on loopback. Floor: (a) p95 <= 50 ms.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GATEWAYMGR_DATA_DIR", tempfile.mkdtemp(prefix="gatewaymgr-bench-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaymgr.settings")

import django  # noqa: E402
from django.conf import settings  # noqa: E402

settings.ROOT_URLCONF = "bench.latency_urls"
django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from smtpsettings import store  # noqa: E402


class BlackHole:
    """Accepts SMTP connections and never says a word."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def timed_requests(url: str, count: int) -> list[float]:
    durations = []
    for i in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(f"{url}&to=user{i}@example.com", timeout=30) as response:
            response.read()
        durations.append((time.perf_counter() - started) * 1000)
    return durations


def report(name: str, durations: list[float]) -> str:
    return (
        f"  {name:<44} n={len(durations):>3}  p50 {statistics.median(durations):7.1f} ms  "
        f"p95 {percentile(durations, 0.95):7.1f} ms  max {max(durations):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--stock-requests", type=int, default=5)
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    os.makedirs(settings.STATIC_ROOT, exist_ok=True)
    hole = BlackHole()
    record = store.load()
    record.sender_email, record.host, record.port = "gateway@example.com", "127.0.0.1", hole.port
    record.save()
    server = make_server("127.0.0.1", 0, get_wsgi_application(), WSGIServer, QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/invite/?"
    try:
        timed_requests(base + "backend=outbox", 5)  # warm up
        outbox = timed_requests(base + "backend=outbox", args.requests)
        product = timed_requests(base + "backend=product", args.requests)
        stock = timed_requests(
            base + f"backend=stock&host=127.0.0.1&port={hole.port}", args.stock_requests
        )
    finally:
        server.shutdown()
        hole.close()
    p95 = percentile(outbox, 0.95)
    print("Invitation request latency, SMTP server accepting but never answering:")
    print(report("(a) outbox backend", outbox))
    print(report("(a') invitations.invite()", product))
    print(report("(b) Django's synchronous SMTP backend (2 s)", stock))
    print(f"  (a) p95 {p95:.1f} ms: {'meets' if p95 <= 50 else 'MISSES'} the floor of 50 ms")
    p95 = percentile(product, 0.95)
    print(f"  (a') p95 {p95:.1f} ms: {'meets' if p95 <= 50 else 'MISSES'} the floor of 50 ms")


if __name__ == "__main__":
    main()
