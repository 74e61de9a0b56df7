"""Indexes for listing newest first with keyset pagination, for the Users page's delivery
status (cause), and for events; the single-column indexes they make redundant go."""

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("notifications", "0008_outbound_batches"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="outboundemail",
            index=models.Index(fields=["created_at", "id"], name="outbox_newest"),
        ),
        migrations.AddIndex(
            model_name="outboundemail",
            index=models.Index(fields=["status", "created_at", "id"], name="outbox_status_newest"),
        ),
        migrations.AddIndex(
            model_name="outboundemail",
            index=models.Index(
                fields=["category", "created_at", "id"], name="outbox_category_newest"
            ),
        ),
        migrations.AddIndex(
            model_name="outboundemail",
            index=models.Index(fields=["cause_type", "cause_id"], name="outbox_cause"),
        ),
        # created_at: led by outbox_newest; status: led by outbox_due and outbox_status_newest.
        migrations.AlterField(
            model_name="outboundemail",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AlterField(
            model_name="outboundemail",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("sending", "Sending"),
                    ("sent", "Sent"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                ],
                default="queued",
                max_length=10,
            ),
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(fields=["created_at", "id"], name="event_newest"),
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(fields=["type", "created_at", "id"], name="event_type_newest"),
        ),
        migrations.AlterField(
            model_name="event",
            name="created_at",
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AlterField(
            model_name="event",
            name="type",
            field=models.CharField(max_length=64),
        ),
    ]
