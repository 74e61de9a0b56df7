"""Apply the retention policy now, as the workers do once a day: per kind of record, what it
removed (or, with --dry-run, would remove)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from notifications.retention import Outcome, apply_policy


def period_text(outcome: Outcome) -> str:
    kind = outcome.kind
    if kind.setting is None:
        return "once their messages are gone"
    value = getattr(settings, kind.setting)
    unit = "hour" if kind.unit.total_seconds() == 3600 else "day"
    return f"older than {value:g} {unit}(s), {kind.setting}"


def line(outcome: Outcome, dry_run: bool) -> str:
    kind = outcome.kind
    if outcome.cutoff is None:
        return f"{kind.name}: kept for good ({kind.setting} is 0)"
    verb = "would remove" if dry_run else "removed"
    text = f"{kind.name} ({period_text(outcome)}): {verb} {outcome.removed:,}"
    if outcome.with_them:
        dependants = ", ".join(
            f"{n:,} {label.split('.')[-1]}" for label, n in sorted(outcome.with_them.items()) if n
        )
        text += f" (with {dependants})" if dependants else ""
    return text


class Command(BaseCommand):
    help = (
        "Apply the retention policy now: remove each kind of record older than its period "
        "(RETENTION_* settings), in batches. The settings history is kept for good."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be removed; remove nothing."
        )

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        for outcome in apply_policy(dry_run=dry_run):
            self.stdout.write(line(outcome, dry_run))
        self.stdout.write("SMTP settings history: kept for good (audit log)")
