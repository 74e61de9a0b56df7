"""Real worker processes against the test database, as `scripts/run` and production run them:
`manage.py outbox_worker`, on the database task backend or on Redis (TASKS_BACKEND=rq)."""

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
    # The product's worker on either backend: the task worker plus the delivery loop.
    return [sys.executable, "manage.py", "outbox_worker", "--interval", "0.05"]


@pytest.fixture
def workers(tmp_path):
    """Start outbox_worker processes against the test database; all are stopped afterwards."""
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
                "OUTBOX_SWEEP_SECONDS": "1",
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


# What the task queue holds, on either backend.


def lose_task_queue() -> None:
    """Every job gone: Redis flushed (RQ) or every task row deleted (database backend)."""
    if settings.TASKS_BACKEND == "rq":
        import django_rq

        django_rq.get_connection().flushall()
    else:
        from django_tasks_db.models import DBTaskResult

        DBTaskResult.objects.all().delete()


def pending_wake_ups() -> int:
    """Delivery tasks waiting to run, now or later."""
    from notifications.tasks import deliver_outbox

    if settings.TASKS_BACKEND == "rq":
        import django_rq
        from rq.registry import ScheduledJobRegistry

        queue = django_rq.get_queue(deliver_outbox.queue_name)
        return queue.count + ScheduledJobRegistry(queue=queue).count
    from django_tasks.base import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(
        status=TaskResultStatus.READY, task_path=deliver_outbox.module_path
    ).count()


def task_records() -> int:
    """Task records kept, whatever their state."""
    if settings.TASKS_BACKEND == "rq":
        import django_rq

        return sum(1 for _ in django_rq.get_connection().scan_iter("rq:job:*"))
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.count()


def running_tasks() -> int:
    from django_tasks.base import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING).count()
