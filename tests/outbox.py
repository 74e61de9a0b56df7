"""Helpers for outbox tests: configure the stored settings and queue messages."""

from __future__ import annotations

import contextlib
import threading

from django.core.mail import EmailMessage, get_connection
from django.db import connection

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


@contextlib.contextmanager
def in_thread(target):
    """Run `target` in a thread with its own database connection; join it on the way out and
    raise what it raised."""
    errors: list[BaseException] = []

    def run():
        try:
            target()
        except BaseException as error:  # handed to the test
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield thread
    finally:
        thread.join(60)
    assert not errors, errors
