"""The delivery task: a doorbell for new mail. The delivery loop of each worker process
(notifications/worker.py) does the work, and finds due mail on its own clock too, so a lost
task costs at most one sweep interval and nothing is ever scheduled in the task queue."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connections, router
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
        deliver_outbox.enqueue()
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
        if not wake_up_waiting():
            deliver_outbox.enqueue()
    except Exception:
        log.warning(
            "Outbox: could not wake a delivery worker (the task queue is unreachable); the "
            "message is stored and a worker's sweep sends it",
            exc_info=True,
        )
