"""Create the first administrator when there is none, and say how to sign in.

scripts/run runs this before the server, into the same output, which may well be a log
(systemd, docker, a file). So the password is shown only on a terminal; otherwise it goes into
an owner-only file in the data directory and only that file's path is printed.
"""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from gatewaymgr import instance


class Command(BaseCommand):
    help = (
        "Create a first administrator if no superuser exists yet, and print how to sign in. "
        "The password is shown on a terminal; otherwise it is written to an owner-only file in "
        "the data directory, whose path is printed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="")
        parser.add_argument("--url", help="Where to sign in (default: PUBLIC_URL).")

    def handle(self, *args: Any, username: str, email: str, url: str | None, **options: Any):
        url = url or f"{settings.PUBLIC_URL}/"
        if settings.PUBLIC_URL_WARNING:
            self.stderr.write(self.style.WARNING(f"Warning: {settings.PUBLIC_URL_WARNING}"))
        saved = Path(settings.DATA_DIR) / instance.FIRST_ADMIN_PASSWORD
        User = get_user_model()
        first = User.objects.filter(is_superuser=True).order_by("pk").first()
        if first is not None:
            self.stdout.write(
                f"Sign in at {url} with your administrator account "
                f"(forgot the password? {changepassword(first.get_username())})."
            )
            if saved.exists():
                self.stdout.write(
                    f"The first administrator's password is still in {saved}: once you have "
                    f"signed in and changed it, remove the file: rm {saved}"
                )
            return
        password = secrets.token_urlsafe(18)
        User.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(
            self.style.SUCCESS("Created the first administrator.")
            + f"\n  Sign in at {url}\n  user:     {username}"
        )
        change = changepassword(username)
        if self.stdout.isatty():
            self.stdout.write(
                f"  password: {password}\n  (shown once, here only; change it with: {change})"
            )
            return
        # Not a terminal: most likely a log, kept and maybe read by others.
        saved.unlink(missing_ok=True)  # an earlier install's, no longer valid
        instance.make_data_dir(saved.parent)
        instance.create_owner_only(saved, password + "\n")
        self.stdout.write(
            f"  password: in {saved}, readable only by its owner (not printed: this output is "
            f"not a terminal)\n  Change it with: {change}, then remove the file: rm {saved}"
        )


def changepassword(username: str) -> str:
    """The command that changes a password, runnable as printed from any directory and without
    the virtualenv activated: this interpreter and this manage.py, by absolute path."""
    manage = Path(settings.BASE_DIR) / "manage.py"
    return shlex.join([sys.executable, str(manage), "changepassword", username])
