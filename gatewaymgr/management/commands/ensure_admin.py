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

    def handle(self, *args, username, email, **options):
        User = get_user_model()
        if User.objects.filter(is_superuser=True).exists():
            self.stdout.write(
                f"Sign in at {settings.PUBLIC_URL}/ with your administrator account "
                "(forgotten the password? python manage.py changepassword USERNAME)."
            )
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email=email, password=password)
        self.stdout.write(
            self.style.SUCCESS("Created the first administrator.")
            + f"\n  Sign in at {settings.PUBLIC_URL}/\n  user:     {username}\n"
            f"  password: {password}\n"
            f"  (shown once; change it with: python manage.py changepassword {username})"
        )
