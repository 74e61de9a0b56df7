"""What the workers tell the console: they are alive, and what their deliveries came to.

Workers and the web server are separate processes (often separate machines), so everything the
console and /metrics show about delivery goes through the database: each worker writes its
heartbeat row every HEALTH_HEARTBEAT_SECONDS and, in the same transaction, adds what it counted
in memory since the last one (Tally, LastDelivery). Nothing is written per message.
"""

from __future__ import annotations

from django.db import models


class WorkerHeartbeat(models.Model):
    """One outbox_worker process, as it last reported itself."""

    worker = models.CharField(max_length=64, unique=True)  # host:pid, as in claimed_by
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)  # a clean exit; None while running
    doing = models.CharField(max_length=100, blank=True)  # "idle", "delivering", "stopping"
    counts = models.JSONField(default=dict)  # outcomes this process handled: {"sent": 12}

    class Meta:
        ordering = ["-last_seen", "-id"]

    def __str__(self) -> str:
        return f"worker {self.worker}"


class Tally(models.Model):
    """A counter that only grows, summed over every worker since the install: deliveries by
    outcome and reason, the delivery latency histogram, OAuth token refreshes. /metrics
    serves them as Prometheus counters."""

    metric = models.CharField(max_length=40)
    key = models.CharField(max_length=200)  # the labels, see notifications.deliverystats
    value = models.FloatField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["metric", "key"], name="tally_unique")]

    def __str__(self) -> str:
        return f"{self.metric}[{self.key}] = {self.value:g}"


class LastDelivery(models.Model):
    """The last successful delivery, and the last one that failed (or will be retried), with
    its reason: what Home shows without searching the outbox."""

    SUCCESS, FAILURE = "success", "failure"

    kind = models.CharField(max_length=10, unique=True)
    at = models.DateTimeField()
    email_id = models.BigIntegerField(null=True)  # no foreign key: the message may be purged
    subject = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=20)
    reason = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"last {self.kind}: {self.at:%Y-%m-%d %H:%M:%S} {self.outcome}"
