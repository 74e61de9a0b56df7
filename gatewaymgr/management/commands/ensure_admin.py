"""Create the first administrator when there is none, and say how to sign in."""

import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a first administrator if no superuser exists yet, and print how to sign in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--email", default="")
        parser.add_argument("--url", help="Where to sign in (default: PUBLIC_URL).")

    def handle(self, *args, username, email, url, **options):
        url = url or f"{settings.PUBLIC_URL}/"
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                f"Sign in at {url} with your administrator account "
                "(forgotten the password? python manage.py changepassword USERNAME)."
            )
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(
            self.style.SUCCESS("Created the first administrator.")
            + f"\n  Sign in at {url}\n  user:     {username}\n"
            f"  password: {password}\n"
            f"  (shown once; change it with: python manage.py changepassword {username})"
        )
