"""Delete sent e-mail older than the retention period (OUTBOX_RETENTION_DAYS, default 30)."""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from notifications.outbox import purge_sent


class Command(BaseCommand):
    help = "Delete sent e-mail older than the retention period. Failed mail is kept."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="Keep sent mail this many days (default: OUTBOX_RETENTION_DAYS).",
        )

    def handle(self, *args: Any, days: int | None, **options: Any) -> None:
        days = settings.OUTBOX_RETENTION_DAYS if days is None else days
        if days < 0:
            self.stderr.write("--days must be 0 or more.")
            raise SystemExit(2)
        deleted = purge_sent(datetime.timedelta(days=days))
        self.stdout.write(f"Deleted {deleted} sent e-mail(s) older than {days} day(s).")
