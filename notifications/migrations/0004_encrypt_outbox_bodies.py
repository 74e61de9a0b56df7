"""Outbox bodies at rest: encrypted with the key ring, and gone once delivered.

Bodies stored in plain text before this migration are encrypted; those of messages already sent
are dropped, not encrypted: nobody needs them again, and an invitation's link then lives on only
in the recipient's mailbox.
"""

from django.db import migrations, models

from smtpsettings import keyring

BATCH = 500


def _batches(queryset):
    """The rows in primary key order, BATCH at a time, without holding a cursor open."""
    after = 0
    while rows := list(queryset.filter(pk__gt=after).order_by("pk")[:BATCH]):
        yield rows
        after = rows[-1].pk


def wipe_freed_pages(apps, schema_editor):
    """SQLite frees pages without wiping them unless told to (Debian's build does; others do
    not): the plaintext would stay in the file after the table is rebuilt and the rows change.
    First of all, since adding the column below already rebuilds the table on SQLite."""
    if schema_editor.connection.vendor == "sqlite":
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("PRAGMA secure_delete = ON")


def encrypt_bodies(apps, schema_editor):
    OutboundEmail = apps.get_model("notifications", "OutboundEmail")
    waiting = OutboundEmail.objects.exclude(status="sent").only("pk", "data")
    for rows in _batches(waiting):
        for email in rows:
            email.message_token = keyring.encrypt_bytes(bytes(email.data)).decode("ascii")
        OutboundEmail.objects.bulk_update(rows, ["message_token"])
    # Their plaintext goes with the column (RemoveField below). PostgreSQL keeps dead row
    # versions in its files until VACUUM FULL rewrites the table: the README says to run it.


def decrypt_bodies(apps, schema_editor):
    """Back to plain text; bodies dropped after delivery stay empty."""
    OutboundEmail = apps.get_model("notifications", "OutboundEmail")
    for rows in _batches(
        OutboundEmail.objects.exclude(message_token="").only("pk", "message_token")
    ):
        for email in rows:
            email.data = keyring.decrypt_bytes(email.message_token.encode("ascii"))
        OutboundEmail.objects.bulk_update(rows, ["data"])


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0003_integrations_events_tokens"),
    ]

    operations = [
        migrations.RunPython(wipe_freed_pages, migrations.RunPython.noop),
        migrations.AddField(
            model_name="outboundemail",
            name="message_token",
            field=models.TextField(blank=True, default=""),
            preserve_default=False,
        ),
        migrations.RunPython(encrypt_bodies, decrypt_bodies),
        migrations.RemoveField(model_name="outboundemail", name="data"),
    ]
