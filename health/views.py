"""Home as a status page, the probes (/healthz, /readyz) and /metrics."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gatewaymgr.signin import request_address
from notifications.models import Breaker
from notifications.outbox import counts_by_status
from smtpsettings import store
from smtpsettings.models import PasswordState
from smtpsettings.options import OptionsError

from . import metrics as prometheus
from .models import LastDelivery, WorkerHeartbeat
from .status import oldest_due, worker_alive, worker_state

WORKERS_SHOWN = 20
SHOW_STOPPED_FOR = datetime.timedelta(days=1)


# Home


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Is mail going out? What each part of it says, for whoever may see that part."""
    context: dict[str, Any] = {}
    now = timezone.now()
    if request.user.has_perm("smtpsettings.view_smtpsettings"):
        context["smtp"] = smtp_summary()
    if request.user.has_perm("notifications.view_outboundemail"):
        context["outbox"] = outbox_summary(now)
        context["workers"] = workers_seen(now)
    return render(request, "console/home.html", context)


@dataclass
class SmtpSummary:
    configured: bool
    sentence: str = ""
    problem: str = ""
    sender: str = ""


def smtp_summary() -> SmtpSummary:
    """Whether a server is set, and the settings page's plan sentence for it."""
    record = store.load()
    if not record.host:
        return SmtpSummary(configured=False)
    summary = SmtpSummary(configured=True, sender=record.sender_email)
    try:
        plan = record.connection_plan()
    except OptionsError as error:
        summary.problem = "The stored options are no longer valid: " + str(error)
        return summary
    missing = (
        plan.authenticates
        and not plan.uses_oauth
        and record.password_state is PasswordState.NOT_SET
    )
    summary.sentence = plan.describe(password_missing=missing)
    return summary


@dataclass
class OutboxSummary:
    counts: dict[str, int]
    oldest_due: datetime.datetime | None
    held_until: datetime.datetime | None
    held_reason: str
    last_success: LastDelivery | None
    last_failure: LastDelivery | None

    @property
    def waiting(self) -> int:
        return self.counts.get("queued", 0) + self.counts.get("sending", 0)


def outbox_summary(now: datetime.datetime) -> OutboxSummary:
    held = Breaker.objects.filter(pk=1, until__gt=now).values_list("until", "reason").first()
    last = {row.kind: row for row in LastDelivery.objects.all()}
    return OutboxSummary(
        counts=counts_by_status(),
        oldest_due=oldest_due(now),
        held_until=held[0] if held else None,
        held_reason=held[1] if held else "",
        last_success=last.get(LastDelivery.SUCCESS),
        last_failure=last.get(LastDelivery.FAILURE),
    )


@dataclass
class WorkerRow:
    worker: str
    host: str
    pid: int
    started_at: datetime.datetime
    last_seen: datetime.datetime
    state: str
    doing: str
    counts: dict[str, int]


def workers_seen(now: datetime.datetime) -> list[WorkerRow]:
    """Running workers and those that died, newest first; cleanly stopped ones for a day."""
    rows = WorkerHeartbeat.objects.exclude(stopped_at__lt=now - SHOW_STOPPED_FOR)[:WORKERS_SHOWN]
    timeout = settings.HEALTH_WORKER_TIMEOUT_SECONDS
    return [
        WorkerRow(
            worker=row.worker,
            host=row.host,
            pid=row.pid,
            started_at=row.started_at,
            last_seen=row.last_seen,
            state=worker_state(row.last_seen, row.stopped_at, now, timeout),
            doing=row.doing,
            counts=row.counts if isinstance(row.counts, dict) else {},
        )
        for row in rows
    ]


# Probes: JSON, no sign-in, nothing secret (answered by health.middleware.ProbeMiddleware).


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: this process serves requests. Nothing else is asked, so a database outage
    never makes an orchestrator kill web processes that would be fine once it is back."""
    return _json({"status": "ok"}, 200)


_migrations_applied = False  # once true, it stays so for this process's code


def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: the database answers, every migration is applied, and a worker was seen
    within HEALTH_WORKER_TIMEOUT_SECONDS. 503 with the check that failed otherwise."""
    checks = readiness()
    ready = all(check["ok"] for check in checks.values())
    return _json(
        {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
    )


def readiness() -> dict[str, dict[str, Any]]:
    global _migrations_applied
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:  # its text may name hosts and users: only the kind is said
        skipped = {"ok": False, "detail": "not checked: the database does not answer"}
        return {
            "database": {
                "ok": False,
                "detail": f"the database does not answer ({type(error).__name__})",
            },
            "migrations": skipped,
            "worker": skipped,
        }
    checks: dict[str, dict[str, Any]] = {"database": {"ok": True}}
    if not _migrations_applied:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
        _migrations_applied = not pending
        if pending:
            checks["migrations"] = {
                "ok": False,
                "detail": f"{len(pending)} migration(s) not applied: run manage.py migrate",
            }
    checks.setdefault("migrations", {"ok": True})
    timeout = settings.HEALTH_WORKER_TIMEOUT_SECONDS
    if worker_alive(timezone.now()):
        checks["worker"] = {"ok": True}
    else:
        checks["worker"] = {
            "ok": False,
            "detail": f"no outbox worker seen in the last {timeout:g} s: start one with "
            "manage.py outbox_worker",
        }
    return checks


def metrics(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(
            "GET only.\n", status=405, content_type="text/plain", headers={"Allow": "GET, HEAD"}
        )
    refusal = prometheus.access_refusal(
        token=settings.METRICS_TOKEN,
        authorization=request.headers.get("Authorization", ""),
        client=request_address(request),
        forwarded="X-Forwarded-For" in request.headers,
        trusted_proxies=settings.TRUSTED_PROXY_COUNT,
    )
    if refusal is not None:
        status, text = refusal
        response = HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    response = HttpResponse(generate_latest(prometheus.registry), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


def _json(body: dict[str, Any], status: int) -> JsonResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response
