"""scripts/run keeps a delivery worker alive (issue 14): kill the worker it started and it starts
a new one, says so on the terminal, and Ctrl+C still stops everything. The real script, on a
free port, with its data in a temporary folder."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from tests.smtpservers import free_port
from tests.workers import wait_until

ROOT = Path(__file__).resolve().parents[1]


def run_env(tmp_path: Path, port: int) -> dict[str, str]:
    data = tmp_path / "var"
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "PUBLIC_URL", "DATABASE_URL"}
        and not name.startswith(("HEALTH_", "OUTBOX_"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    env.update(
        GATEWAYMGR_DATA_DIR=str(data),
        DATABASE_URL=f"sqlite:///{data / 'db.sqlite3'}",
        BIND=f"127.0.0.1:{port}",
        SECRET_KEY="scripts-run-test-secret-key-0123456789abcdef",
        TASKS_BACKEND="db",
        HEALTH_HEARTBEAT_SECONDS="0.5",
        HEALTH_WORKER_TIMEOUT_SECONDS="3",
    )
    return env


def readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)
    except OSError:
        return 0, {}


def worker_pids(output: str) -> list[int]:
    """The workers the log names ("Outbox worker host:pid: sweeping ..."), in order."""
    return [int(pid) for pid in re.findall(r"Outbox worker [^\s:]+:(\d+): sweeping", output)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too: it only waits for its parent to read its status.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_scripts_run_starts_a_new_worker_when_its_worker_dies(tmp_path):
    port = free_port()
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        run = subprocess.Popen(
            ["scripts/run"],
            cwd=ROOT,
            env=run_env(tmp_path, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    output = lambda: log.read_text(errors="replace")  # noqa: E731
    try:
        # The first run may build .venv from the lock: give it time.
        wait_until(lambda: readyz(port)[0] == 200, timeout=900, what="/readyz 200: a worker")
        first = worker_pids(output())[0]

        os.kill(first, signal.SIGKILL)
        wait_until(
            lambda: len(worker_pids(output())) >= 2, timeout=120, what="a new worker started"
        )
        text = output()
        assert f"The delivery worker (pid {first}) died" in text
        second = worker_pids(text)[1]
        assert second != first and alive(second)
        assert f"Started a new delivery worker (pid {second})" in text
        wait_until(lambda: readyz(port)[0] == 200, timeout=120, what="ready again")

        # Ctrl+C: the terminal signals the whole foreground group; everything stops, and the
        # worker is not started again.
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(60) is not None
        wait_until(lambda: not alive(second), timeout=30, what="the worker stopped")
        assert len(worker_pids(output())) == 2, output()
        assert "Outbox worker" in output() and "stopped" in output()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # anything left in its group
