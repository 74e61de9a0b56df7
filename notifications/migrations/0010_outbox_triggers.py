"""Exact outbox counts by status kept by database triggers, and bodies dropped by the UPDATE
that makes a message Sent: see notifications.triggers."""

from django.db import migrations, models


def create_triggers(apps, schema_editor):
    from notifications import triggers

    triggers.install(schema_editor.connection)


def drop_triggers(apps, schema_editor):
    from notifications import triggers

    postgresql = schema_editor.connection.vendor == "postgresql"
    for statement in triggers.POSTGRESQL_DROP if postgresql else triggers.SQLITE_DROP:
        schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0009_keyset_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name="OutboundStatusCount",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("status", models.CharField(max_length=10)),
                ("shard", models.SmallIntegerField()),
                ("n", models.BigIntegerField(default=0)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("status", "shard"), name="outbox_count_shard")
                ],
            },
        ),
        migrations.RunPython(create_triggers, drop_triggers),
    ]
