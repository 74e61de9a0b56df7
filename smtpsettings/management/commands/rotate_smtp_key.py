"""Re-encrypt what is stored under the key ring (the SMTP password, the other sign-in secrets,
the shared access tokens and the bodies waiting in the outbox) under its newest key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from notifications import outbox
from smtpsettings import keyring, store
from smtpsettings.models import SECRETS, OAuthAccessToken, secret_noun

# How to enter each secret again on the command line.
AGAIN = {
    "password_token": "--password-stdin",
    "oauth_credential_token": "--oauth-client-secret-stdin (or --oauth-certificate, ...)",
    "client_key_token": "--client-certificate FILE",
}


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
        problems = [self.rotate_secrets(), self.rotate_outbox()]
        if any(problems):
            raise CommandError(" ".join(problem for problem in problems if problem))

    def rotate_secrets(self) -> str:
        """The password and every other stored secret. Returns the problems, or ""."""
        settings = store.load()
        problems, rotated = [], []
        for field in SECRETS:
            if not getattr(settings, field):
                continue
            try:
                setattr(settings, field, keyring.reencrypt(getattr(settings, field)))
            except keyring.UndecryptablePassword:
                problems.append(
                    f"The stored {secret_noun(field)} cannot be decrypted with the current keys "
                    "(SECRET_KEY or SMTP_ENCRYPTION_KEYS changed since it was saved). Enter it "
                    f"again on Settings -> SMTP, or: python manage.py smtp_settings set "
                    f"{AGAIN[field]}"
                )
                continue
            rotated.append(field)
        if not rotated and not problems:
            self.stdout.write(
                "No SMTP password is stored, nor any other secret; nothing to re-encrypt."
            )
        if rotated:
            settings.save(update_fields=rotated)
            for field in rotated:
                self.stdout.write(
                    self.style.SUCCESS(
                        f"The SMTP {secret_noun(field)} is now encrypted under the newest key."
                    )
                )
        self.rotate_shared_tokens()
        return " ".join(problems)

    def rotate_shared_tokens(self) -> None:
        """Access tokens are only a cache: one no key reads is dropped and fetched anew."""
        for row in OAuthAccessToken.objects.exclude(token=""):
            try:
                row.token = keyring.reencrypt(row.token)
            except keyring.UndecryptablePassword:
                row.delete()
                continue
            row.save(update_fields=["token"])

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
