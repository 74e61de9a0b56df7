"""Outbox bodies at rest: encrypted with the key ring, dropped once delivered, moved to the
newest key by rotate_smtp_key, and what the worker and the Outbox page do when a body is gone or
no key can read it. The raw-file and all-columns checks live in test_at_rest.py."""

import io
import os

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from notifications.delivery import Courier
from notifications.models import OutboundEmail, Status
from smtpsettings import keyring
from tests.outbox import point_settings_at, queue
from tests.smtpservers import require_test_host, smtp_server
from tests.test_at_rest import every_value_in_the_database, raw_outbox_files


@pytest.fixture(autouse=True)
def _test_host(settings):
    require_test_host()
    settings.OUTBOX_RETRY_FIRST_DELAY = 0


def subjects(server) -> list[str]:
    return sorted(m.message["Subject"] for m in server.messages)


@pytest.mark.django_db
def test_a_delivered_message_keeps_its_record_but_not_its_body(admin_client):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        queue(1, prefix="Welcome")
        Courier().drain()
    email = OutboundEmail.objects.get()
    assert subjects(server) == ["Welcome 0"]
    assert email.status == Status.SENT and email.recipients[0]["status"] == "sent"
    assert [a.reply for a in email.history.all()] == ["250 OK: queued"]
    page = admin_client.get(f"/outbox/{email.pk}/").content.decode()
    assert "Body removed after delivery" in page
    assert "Welcome 0" in page and "bob@example.com" in page and "250 OK: queued" in page
    assert "Retry now" not in page


@pytest.mark.django_db
def test_retrying_a_delivered_message_says_why_it_cannot_be_sent_again(admin_client):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        queue(1)
        Courier().drain()
    email = OutboundEmail.objects.get()
    response = admin_client.post(f"/outbox/{email.pk}/retry/", follow=True)
    assert response.status_code == 200
    assert "its body was removed after delivery" in response.content.decode()
    email.refresh_from_db()
    assert email.status == Status.SENT


@pytest.mark.django_db
def test_a_body_no_key_can_read_fails_with_a_clear_reason_and_the_rest_goes_out(
    settings, admin_client
):
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    queue(1, prefix="Before")
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]  # the old key was lost
    queue(1, prefix="After")
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        assert Courier().drain() == 2
    assert subjects(server) == ["After 0"]
    lost = OutboundEmail.objects.get(subject="Before 0")
    assert lost.status == Status.FAILED
    assert "cannot be decrypted with the current keys" in lost.last_error
    page = admin_client.get(f"/outbox/{lost.pk}/").content.decode()
    assert "cannot be decrypted with the current keys" in page
    assert "the key ring changed since it was queued" in page
    assert OutboundEmail.objects.get(subject="After 0").status == Status.SENT


@pytest.mark.django_db
def test_rotate_smtp_key_moves_waiting_bodies_to_the_newest_key(settings):
    old, new = keyring.generate_key(), keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [old]
    queue(3, prefix="Waiting")
    settings.SMTP_ENCRYPTION_KEYS = [new, old]
    out = io.StringIO()
    call_command("rotate_smtp_key", stdout=out)
    assert "3 outbox messages are now encrypted under the newest key" in out.getvalue()
    settings.SMTP_ENCRYPTION_KEYS = [new]  # the old key can go now
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        Courier().drain()
    assert subjects(server) == ["Waiting 0", "Waiting 1", "Waiting 2"]


@pytest.mark.django_db
def test_rotate_smtp_key_names_bodies_no_key_can_read(settings):
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    queue(2)
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    queue(1)
    out = io.StringIO()
    with pytest.raises(CommandError, match="2 outbox messages cannot be decrypted"):
        call_command("rotate_smtp_key", stdout=out)
    assert "1 outbox message is now encrypted under the newest key" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_the_migration_encrypts_waiting_bodies_and_drops_delivered_ones():
    """An outbox from before encryption: plaintext bodies, some of them already delivered.
    After the migration (and, on PostgreSQL, the VACUUM FULL the README asks for) neither SQL nor
    the files under the database hold their links."""
    before = [("notifications", "0003_integrations_events_tokens")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps.get_model("notifications", "OutboundEmail")
    common = {"envelope_from": "gateway@example.com", "message_id": "<m@example.com>"}
    recipient = [{"address": "bob@example.com", "status": "pending", "reply": ""}]
    bodies = {}
    for i in range(50):
        for status in ("queued", "sent"):
            link = f"https://x.example/invite/{status}-TOKEN-{i}/"
            # Invitation-sized, and random so that no database compresses the link out of sight.
            body = f"Subject: {i}\r\n\r\n{link}\r\n{os.urandom(1000).hex()}\r\n".encode()
            row = old.objects.create(data=body, status=status, recipients=recipient, **common)
            bodies[row.pk] = body
    assert b"queued-TOKEN-7" in raw_outbox_files() and b"sent-TOKEN-7" in raw_outbox_files()
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA secure_delete = OFF")  # as SQLite builds other than Debian's

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("notifications"))

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM FULL notifications_outboundemail")
    assert b"-TOKEN-" not in raw_outbox_files()
    assert b"-TOKEN-" not in every_value_in_the_database()
    for email in OutboundEmail.objects.all():
        if email.status == Status.SENT:
            assert not email.has_body
        else:
            assert email.message_bytes() == bodies[email.pk]
