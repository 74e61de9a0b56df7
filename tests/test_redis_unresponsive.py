"""A Redis that accepts connections and never answers (a hung server, a half-open firewall) must
not hold up a web request that stores mail for good: the wake-up it rings after the commit gives
up after redis-py's socket timeout (5 s since redis 6), the message stays stored, and a
worker's sweep sends it (see notifications/tasks.ring). Checked in a process of its own on the
RQ backend, against a real socket that never says a word."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.test_security_files import install_env, manage

ROOT = Path(__file__).resolve().parents[1]
SEND = (
    "from django.core.mail import send_mail;"
    "from notifications.models import OutboundEmail;"
    "send_mail('Invitation', 'Follow the link.', None, ['ann@example.com']);"
    "print('stored', OutboundEmail.objects.filter(status='queued').count())"
)


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never reads or writes: "redis://" to nobody."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(5)
    for connection in accepted:
        connection.close()
    listener.close()


def test_send_mail_returns_when_redis_never_answers(tmp_path, silent_server):
    env = install_env(tmp_path / "var")
    manage(env, "migrate", "--no-input")
    env.update(
        TASKS_BACKEND="rq",
        REDIS_URL=f"redis://127.0.0.1:{silent_server}/0",
    )
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", SEND],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("send_mail was still waiting for Redis after 30 s")
    assert result.returncode == 0, result.stderr
    assert "stored 1" in result.stdout
    assert "could not wake a delivery worker" in result.stderr  # logged, not raised
