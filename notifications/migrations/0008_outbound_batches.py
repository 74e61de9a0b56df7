"""Bulk sends get a row of their own (OutboundBatch: key, subject, total, when), so the
"Bulk sends" box reads the newest five batches and counts only their messages through the
(batch, status) index, instead of grouping every batched message. The outbox's batch key
becomes a foreign key to it."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


def make_batches(apps, schema_editor):
    OutboundEmail = apps.get_model("notifications", "OutboundEmail")
    OutboundBatch = apps.get_model("notifications", "OutboundBatch")
    groups = (
        OutboundEmail.objects.exclude(batch="")
        .values("batch")
        .annotate(
            total=models.Count("id"),
            subject=models.Min("subject"),
            created_at=models.Min("created_at"),
        )
        .order_by()
    )
    OutboundBatch.objects.bulk_create(
        (
            OutboundBatch(
                key=g["batch"], subject=g["subject"], total=g["total"], created_at=g["created_at"]
            )
            for g in groups.iterator()
        ),
        batch_size=1000,
    )
    schema_editor.execute(
        "UPDATE notifications_outboundemail SET bulk_id = (SELECT id FROM notifications_outboundbatch"
        " WHERE \"key\" = notifications_outboundemail.batch) WHERE batch <> ''"
    )


def unmake_batches(apps, schema_editor):
    schema_editor.execute(
        'UPDATE notifications_outboundemail SET batch = (SELECT "key" FROM'
        " notifications_outboundbatch WHERE id = notifications_outboundemail.bulk_id)"
        " WHERE bulk_id IS NOT NULL"
    )


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0007_outbound_recipients"),
    ]

    operations = [
        migrations.CreateModel(
            name="OutboundBatch",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("key", models.CharField(max_length=32, unique=True)),
                ("subject", models.CharField(blank=True, max_length=255)),
                ("total", models.PositiveIntegerField()),
                (
                    "created_at",
                    models.DateTimeField(db_index=True, default=django.utils.timezone.now),
                ),
            ],
            options={
                "ordering": ["-created_at", "-id"],
            },
        ),
        migrations.AddField(
            model_name="outboundemail",
            name="bulk",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="emails",
                to="notifications.outboundbatch",
            ),
        ),
        migrations.RunPython(make_batches, unmake_batches),
        migrations.RemoveField(model_name="outboundemail", name="batch"),
        migrations.RenameField(model_name="outboundemail", old_name="bulk", new_name="batch"),
        migrations.AddIndex(
            model_name="outboundemail",
            index=models.Index(fields=["batch", "status"], name="outbox_batch_status"),
        ),
    ]
