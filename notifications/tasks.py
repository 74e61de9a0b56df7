"""The delivery task: a doorbell for new mail. The delivery loop of each worker process
(notifications/worker.py) does the work, and finds due mail on its own clock too, so a lost
task costs at most one sweep interval and nothing is ever scheduled in the task queue."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db import connections, router, transaction
from django.utils import timezone
from django_tasks import TaskResultStatus, task

from . import worker

log = logging.getLogger(__name__)


@task()
def deliver_outbox() -> int:
    """Wake this process's delivery loop. A plain db_worker or rqworker (not outbox_worker)
    has no loop: it delivers here, and only new mail wakes it."""
    loop = worker.running_loop()
    if loop is None:
        return worker.sweep()
    if loop.stopping.is_set():  # leave the wake-up to a worker that stays
        ring()
    else:
        loop.wake()
    return 0


def wake_up_waiting() -> bool:
    """Whether a delivery task is queued that no worker has started yet. It will start after
    this moment, so its drain sees every row committed until now: another one is redundant."""
    if settings.TASKS_BACKEND == "rq":
        import django_rq
        from rq.job import Job
        from rq.utils import as_text

        queue = django_rq.get_queue(deliver_outbox.queue_name)
        newest = queue.connection.lrange(queue.key, -20, -1)  # jobs are pushed on the right
        ids = [as_text(job_id) for job_id in newest]
        jobs = Job.fetch_many(ids, connection=queue.connection)
        return any(job is not None and job.func_name == deliver_outbox.module_path for job in jobs)
    return _db_task_ready(deliver_outbox.module_path, deliver_outbox.backend)


def _db_task_ready(task_path: str, backend_name: str) -> bool:
    """Whether a task of `task_path` is ready to start (DBTaskResult.objects.ready()). Plain
    SQL: this runs after every commit that stores mail, and building the ORM's query cost
    more than running it."""
    from django_tasks_db.models import DBTaskResult, get_date_max

    connection = connections[router.db_for_read(DBTaskResult)]
    quote, adapt = connection.ops.quote_name, connection.ops.adapt_datetimefield_value
    column = {
        name: quote(DBTaskResult._meta.get_field(name).column)
        for name in ("status", "task_path", "backend_name", "run_after")
    }
    sql = (
        f"SELECT 1 FROM {quote(DBTaskResult._meta.db_table)} WHERE {column['status']} = %s "
        f"AND {column['task_path']} = %s AND {column['backend_name']} = %s "
        f"AND ({column['run_after']} = %s OR {column['run_after']} <= %s) LIMIT 1"
    )
    now, never = adapt(timezone.now()), adapt(get_date_max())
    with connection.cursor() as cursor:
        cursor.execute(sql, [TaskResultStatus.READY, task_path, backend_name, never, now])
        return cursor.fetchone() is not None


def ring() -> None:
    """After a commit that stored or re-queued mail: wake a worker, unless one is already
    being woken. Never raises: the rows are committed, and every worker's sweep finds them
    within OUTBOX_SWEEP_SECONDS even if the task queue is unreachable."""
    try:
        if wake_up_waiting():  # the common case in a burst, and only a read
            return
        with one_ringer():  # two processes that both found none must not both queue one
            if not wake_up_waiting():
                deliver_outbox.enqueue()
    except Exception:
        log.warning(
            "Outbox: could not wake a delivery worker (the task queue is unreachable); the "
            "message is stored and a worker's sweep sends it",
            exc_info=True,
        )


# pg_advisory_xact_lock's key for one_ringer(): any constant that nothing else uses.
RING_LOCK = 0x6D61696C  # "mail"


@contextlib.contextmanager
def one_ringer() -> Iterator[None]:
    """Held by one process at a time, between finding no wake-up waiting and queueing one."""
    if settings.TASKS_BACKEND == "rq":
        import django_rq

        redis = django_rq.get_queue(deliver_outbox.queue_name).connection
        with redis.lock("gatewaymgr:outbox-ring", timeout=10, blocking_timeout=10):
            yield
        return
    from django_tasks_db.models import DBTaskResult

    alias = router.db_for_write(DBTaskResult)
    with transaction.atomic(using=alias):
        connection = connections[alias]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RING_LOCK])
        elif connection.vendor == "sqlite" and not _begins_immediate(connection):
            # A deferred transaction takes the write lock only at its first write: take it now.
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {_task_table(connection)} WHERE 0 = 1")
        # The settings' SQLite transactions begin IMMEDIATE: they hold the write lock already.
        yield


def _begins_immediate(connection) -> bool:
    mode = connection.settings_dict.get("OPTIONS", {}).get("transaction_mode") or ""
    return mode.upper() in ("IMMEDIATE", "EXCLUSIVE")


def _task_table(connection) -> str:
    from django_tasks_db.models import DBTaskResult

    return connection.ops.quote_name(DBTaskResult._meta.db_table)
