from __future__ import annotations

from django.db import models


class DailyRun(models.Model):
    """One row: when the workers last applied the retention policy, which worker, and what it
    removed. A worker claims the day with one conditional UPDATE of this row (see
    notifications.retention.claim), so however many workers run, one of them runs it."""

    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=64, blank=True)
    removed = models.JSONField(default=dict, blank=True)  # {"sent mail": 1234, ...}

    def __str__(self) -> str:
        if self.started_at is None:
            return "retention: never applied"
        return f"retention applied at {self.started_at:%Y-%m-%d %H:%M} by {self.worker}"
