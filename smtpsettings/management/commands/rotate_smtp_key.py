"""Re-encrypt what is stored under the key ring (the SMTP password and the bodies waiting in the
outbox) under its newest key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications import outbox
from smtpsettings import keyring, store


def messages(count: int) -> str:
    return f"{count:,} outbox message{'' if count == 1 else 's'}"


class Command(BaseCommand):
    help = (
        "Re-encrypt the stored SMTP password and the outbox's waiting messages under the newest "
        "key: the first of SMTP_ENCRYPTION_KEYS, else the key derived from SECRET_KEY."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--generate",
            action="store_true",
            help="Only print a new key to put first in SMTP_ENCRYPTION_KEYS.",
        )

    def handle(self, *args: Any, generate: bool, **options: Any) -> None:
        if generate:
            self.stdout.write(keyring.generate_key())
            return
        problems = [self.rotate_password(), self.rotate_outbox()]
        if any(problems):
            raise CommandError(" ".join(problem for problem in problems if problem))

    def rotate_password(self) -> str:
        """Returns the problem, or "" when there is none."""
        settings = store.load()
        if not settings.password_token:
            self.stdout.write("No SMTP password is stored; nothing to re-encrypt.")
            return ""
        try:
            settings.password_token = keyring.reencrypt(settings.password_token)
        except keyring.UndecryptablePassword as error:
            return f"{error} Use: python manage.py smtp_settings set --password-stdin"
        settings.save(update_fields=["password_token"])
        self.stdout.write(
            self.style.SUCCESS("The SMTP password is now encrypted under the newest key.")
        )
        return ""

    def rotate_outbox(self) -> str:
        """Returns the problem, or "" when there is none."""
        done, unreadable = outbox.reencrypt_bodies()
        if done or not unreadable:
            verb = "is" if done == 1 else "are"
            self.stdout.write(
                self.style.SUCCESS(f"{messages(done)} {verb} now encrypted under the newest key.")
            )
        if not unreadable:
            return ""
        return (
            f"{messages(unreadable)} cannot be decrypted with the current keys (SECRET_KEY or "
            "SMTP_ENCRYPTION_KEYS changed since they were queued); a worker fails them when it "
            "reaches them. Put the old key back into SECRET_KEY_FALLBACKS or "
            "SMTP_ENCRYPTION_KEYS and run rotate_smtp_key again."
        )
