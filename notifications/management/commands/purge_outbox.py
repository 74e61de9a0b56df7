"""Delete sent e-mail older than the retention period (RETENTION_SENT_DAYS, default 30), in
batches (see notifications/retention.py). `apply_retention` applies the whole policy."""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from notifications.retention import SENT_MAIL, purge


class Command(BaseCommand):
    help = (
        "Delete sent e-mail older than the retention period, in batches. Failed mail is left to "
        "apply_retention (RETENTION_FAILED_DAYS)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Keep sent mail this many days; 0 deletes all of it (default: "
            "RETENTION_SENT_DAYS, where 0 keeps it for good).",
        )

    def handle(self, *args: Any, days: int | None, **options: Any) -> None:
        if days is None:
            days = settings.RETENTION_SENT_DAYS
            if not days:
                self.stdout.write("Sent e-mail is kept for good (RETENTION_SENT_DAYS is 0).")
                return
        if days < 0:
            raise CommandError("--days must be 0 or more.")
        cutoff = timezone.now() - datetime.timedelta(days=days)
        deleted = purge(SENT_MAIL, cutoff).removed
        self.stdout.write(f"Deleted {deleted} sent e-mail(s) older than {days} day(s).")
