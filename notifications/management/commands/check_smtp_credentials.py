"""Announce SMTP sign-in credentials that expire soon (workers also do this every hour)."""

from django.core.management.base import BaseCommand

from notifications.credential_notices import announce_expiring_credentials


class Command(BaseCommand):
    help = "Raise smtp.credential_expiring for credentials 30, 7 or 1 days from expiry."

    def handle(self, *args, **options):
        events = announce_expiring_credentials()
        for event in events:
            self.stdout.write(
                f"The {event.payload['credential']} expires on {event.payload['expires_at']} "
                f"({event.payload['days_left']} days): notice {event.pk} raised."
            )
        if not events:
            self.stdout.write("No credential is due for a notice.")
