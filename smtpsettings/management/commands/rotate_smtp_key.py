"""Re-encrypt the stored SMTP password under the newest key of the key ring."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from smtpsettings import keyring, store


class Command(BaseCommand):
    help = (
        "Re-encrypt the stored SMTP password under the newest key: the first of "
        "SMTP_ENCRYPTION_KEYS, else the key derived from SECRET_KEY."
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
        settings = store.load()
        if not settings.password_token:
            self.stdout.write("No SMTP password is stored; nothing to re-encrypt.")
            return
        try:
            settings.password_token = keyring.reencrypt(settings.password_token)
        except keyring.UndecryptablePassword as error:
            raise CommandError(
                f"{error} Use: python manage.py smtp_settings set --password-stdin"
            ) from None
        settings.save(update_fields=["password_token"])
        self.stdout.write(
            self.style.SUCCESS("The SMTP password is now encrypted under the newest key.")
        )
