"""Real task worker processes against the test database, as `scripts/run` and production run
them: `manage.py db_worker`, or RQ workers when the run is on Redis (TASKS_BACKEND=rq)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.smtpservers import require_test_host

ROOT = Path(__file__).resolve().parents[1]


def database_url() -> str:
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    return (
        f"postgres://{params['USER']}:{params.get('PASSWORD') or ''}@{params['HOST']}:"
        f"{params['PORT']}/{params['NAME']}"
    )


def worker_command() -> list[str]:
    if settings.TASKS_BACKEND == "rq":
        # SimpleWorker runs jobs in its own process, so the SMTP connection outlives a job;
        # the scheduler runs deferred wake-ups (retries and lease watchdogs).
        return [
            sys.executable,
            "manage.py",
            "rqworker",
            "default",
            "--with-scheduler",
            "--worker-class",
            "rq.worker.SimpleWorker",
            "--job-class",
            "django_tasks_rq.backend.Job",  # the job class django-tasks-rq enqueues with
        ]
    return [sys.executable, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"]


@pytest.fixture
def workers(tmp_path):
    """Start db_worker processes against the test database; all are stopped afterwards."""
    require_test_host()
    started: list[subprocess.Popen] = []

    def start(**env) -> subprocess.Popen:
        log = open(tmp_path / f"worker-{len(started)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            worker_command(),
            cwd=ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "DATABASE_URL": database_url(),
                "OUTBOX_LEASE_SECONDS": "2",
                "OUTBOX_RETRY_FIRST_DELAY": "0.2",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
