"""manage.py outbox_worker: the task worker of TASKS_BACKEND plus this process's delivery loop.

With TASKS_BACKEND=db it runs django-tasks-db's worker; with rq an RQ SimpleWorker on the
default queue (jobs run in this process, so the SMTP connection outlives a job). Either way a
thread delivers the outbox (notifications/worker.py), and the lease thread records the
worker's heartbeat (health/), which the console's banner, Home, /readyz and /metrics read.
SIGTERM or SIGINT: the message in flight is finished, every other claimed message released at
once, and the process exits (marked stopped); a second signal exits at once, and the message in
flight goes out again after its lease.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.management.base import BaseCommand

from notifications import worker

log = logging.getLogger("notifications.worker")


class Command(BaseCommand):
    help = "Run a task worker that also delivers the outbox (the worker scripts/run starts)."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="db backend: seconds between looks at the task table when idle (default 1)",
        )

    def handle(self, *, interval: float, verbosity: int, **options) -> None:
        loop = worker.DeliveryLoop()
        loop.start()
        log.info(
            "Outbox worker %s: sweeping every %ss on the %s task backend, a heartbeat every %ss",
            worker.courier().worker,
            loop.interval,
            settings.TASKS_BACKEND,
            settings.HEALTH_HEARTBEAT_SECONDS,
        )
        try:
            if settings.TASKS_BACKEND == "rq":
                run_rq_worker(loop)
            else:
                run_db_worker(loop, interval)
        finally:
            worker.finish(loop)
            log.info("Outbox worker %s: stopped", worker.courier().worker)


def run_db_worker(loop: worker.DeliveryLoop, interval: float) -> None:
    from django_tasks.base import DEFAULT_TASK_QUEUE_NAME
    from django_tasks_db.management.commands.db_worker import Worker

    task_worker = Worker(
        queue_names=[DEFAULT_TASK_QUEUE_NAME],
        interval=interval,
        batch=False,
        backend_name="default",
        startup_delay=False,
        max_tasks=None,
        worker_id=worker.task_worker_id(),  # host:pid, so a dead one's records are found
        excluded_queue_names=[],
    )
    task_worker.configure_signals()
    worker.chain_stop_signals(loop)
    task_worker.run()


def run_rq_worker(loop: worker.DeliveryLoop) -> None:
    """RQ's worker quits when Redis fails under it (or is away at the start); this process
    does not: the delivery loop goes on from the database, and the RQ worker is started again."""
    import signal

    import django_rq
    from django_tasks_rq.backend import Job
    from rq.worker import SimpleWorker

    class OutboxRQWorker(SimpleWorker):
        def _install_signal_handlers(self) -> None:
            super()._install_signal_handlers()
            worker.chain_stop_signals(loop)

    while not loop.stopping.is_set():
        try:
            task_worker = django_rq.get_worker(
                "default", worker_class=OutboxRQWorker, job_class=Job
            )
            task_worker.work(logging_level="INFO")
        except Exception:
            log.warning(
                "The RQ worker stopped (is Redis away?); mail still goes out", exc_info=True
            )
        if loop.stopping.is_set():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):  # between two RQ workers
            signal.signal(signum, signal.SIG_DFL)
        worker.chain_stop_signals(loop)
        loop.stopping.wait(RQ_RESTART_SECONDS)


RQ_RESTART_SECONDS = 5
