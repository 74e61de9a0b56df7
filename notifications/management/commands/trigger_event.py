"""Trigger an event from the command line, validated exactly like the HTTP API.

Like the API, it refuses the events only the product raises (user.invited, user.joined,
smtp.settings_changed): an operator with a shell could otherwise forge an audit notice as
easily as a token holder, and one rule for both is easier to trust. --list marks them."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gatewaymgr.untrusted import UnsafeJson, load_json
from notifications.events import MAX_JSON_DEPTH, InvalidEvent, public_types
from notifications.models import EventSource
from notifications.triggering import trigger


class Command(BaseCommand):
    help = "Trigger an event: record it and queue its notifications in the outbox."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("type", nargs="?", help="Event type, e.g. api.deployed.")
        parser.add_argument(
            "--data", default="{}", help='The payload as a JSON object, e.g. \'{"api": "orders"}\'.'
        )
        parser.add_argument(
            "--list", action="store_true", help="List the event types and their fields."
        )

    def handle(self, *args, **options) -> None:
        if options["list"]:
            self.stdout.write(catalog_text())
            return
        if not options["type"]:
            raise CommandError("Name an event type, or use --list to see them.")
        try:
            payload = load_json(options["data"], max_depth=MAX_JSON_DEPTH)
        except UnsafeJson as problem:
            raise CommandError(f"--data {problem}.") from None
        except json.JSONDecodeError as problem:
            raise CommandError(f"--data is not valid JSON: {problem}.") from None
        try:
            event = trigger(
                options["type"], payload, actor="command line", source=EventSource.COMMAND
            )
        except InvalidEvent as invalid:
            lines = [
                f"  {field}: {' '.join(messages)}" for field, messages in invalid.errors.items()
            ]
            raise CommandError("Nothing was triggered:\n" + "\n".join(lines)) from None
        count = event.dispatches.count()
        self.stdout.write(
            f"Event {event.pk} ({event.type}) recorded: {count} integration(s) matched, "
            f"{count} message(s) queued."
        )


def catalog_text() -> str:
    lines = []
    for spec in public_types():
        only = " (raised by Gateway Manager only; integrations may subscribe)"
        lines.append(
            f"{spec.type}  {spec.label}: {spec.description}{only if spec.product_only else ''}"
        )
        for field in spec.fields:
            need = "required" if field.required else "optional"
            lines.append(f"    {field.name} ({field.type}, {need}) {field.description}")
    return "\n".join(lines)
