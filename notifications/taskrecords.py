"""Task records stay bounded without anyone running a command.

Every worker's delivery loop calls tidy_task_records() now and then:
- database backend: finished records older than OUTBOX_TASK_RETENTION_HOURS are deleted, and a
  record left RUNNING by a worker that died (its process is gone, or it ran longer than the
  retention) is marked failed, so it is pruned in turn;
- RQ: finished jobs expire by themselves (result_ttl); failed jobs (kept a year by RQ, e.g.
  ones abandoned by a killed worker) are deleted past the retention.
"""

from __future__ import annotations

import datetime
import logging

from django.conf import settings
from django.utils import timezone

log = logging.getLogger(__name__)


def retention() -> datetime.timedelta:
    return datetime.timedelta(hours=settings.OUTBOX_TASK_RETENTION_HOURS)


def tidy_task_records() -> int:
    """Returns how many records were deleted or marked failed."""
    if settings.TASKS_BACKEND == "rq":
        return _tidy_rq()
    return _tidy_db()


def _tidy_db() -> int:
    from django_tasks.base import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    from .worker import local_process_alive

    now = timezone.now()
    cutoff = now - retention()
    dead = [
        record.pk
        for record in DBTaskResult.objects.running().only("pk", "worker_ids", "started_at")
        if (record.started_at and record.started_at < cutoff)
        or (record.worker_ids and local_process_alive(record.worker_ids[-1]) is False)
    ]
    # Only where it is still RUNNING: a worker that finishes meanwhile keeps its own result.
    failed = DBTaskResult.objects.filter(pk__in=dead, status=TaskResultStatus.RUNNING).update(
        status=TaskResultStatus.FAILED,
        finished_at=now,
        exception_class_path="builtins.SystemExit",
        traceback="The worker running this task died.",
    )
    deleted, _ = DBTaskResult.objects.finished().filter(finished_at__lt=cutoff).delete()
    if failed or deleted:
        log.info("Task records: %d left by dead workers failed, %d old pruned", failed, deleted)
    return failed + deleted


def _tidy_rq() -> int:
    import django_rq
    from rq.job import Job
    from rq.registry import FailedJobRegistry

    cutoff = timezone.now() - retention()
    deleted = 0
    for name in settings.RQ_QUEUES:
        queue = django_rq.get_queue(name)
        registry = FailedJobRegistry(queue=queue)
        ids = registry.get_job_ids()
        jobs = Job.fetch_many(ids, connection=queue.connection)
        for job_id, job in zip(ids, jobs, strict=True):
            if job is None:
                registry.remove(job_id)
            elif job.ended_at is None or job.ended_at < cutoff:
                registry.remove(job, delete_job=True)
                deleted += 1
    if deleted:
        log.info("Task records: %d failed RQ jobs pruned", deleted)
    return deleted
