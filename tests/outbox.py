"""Helpers for outbox tests: configure the stored settings and queue messages."""

from __future__ import annotations

from django.core.mail import EmailMessage, get_connection

from smtpsettings import store

OUTBOX = "notifications.backends.OutboxBackend"


def point_settings_at(host: str, port: int, **options) -> None:
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port = host, port
    record.options = {"auto_tls": False, "timeout": 5, **options}
    record.save()


def queue(count: int, *, recipients=("bob@example.com",), prefix: str = "Message") -> None:
    messages = [
        EmailMessage(f"{prefix} {i}", f"Body {i}", None, list(recipients)) for i in range(count)
    ]
    assert get_connection(OUTBOX).send_messages(messages) == count
