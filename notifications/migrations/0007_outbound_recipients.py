"""A row per envelope recipient (OutboundRecipient: address and domain, lower case, indexed),
so the Outbox search finds an address, an address prefix or a domain through an index instead
of LIKE '%q%' over every message. Replaces the to_text column."""

import django.db.models.deletion
from django.db import migrations, models

BATCH = 2000


def fill_recipients(apps, schema_editor):
    OutboundEmail = apps.get_model("notifications", "OutboundEmail")
    OutboundRecipient = apps.get_model("notifications", "OutboundRecipient")
    after = 0
    while rows := list(
        OutboundEmail.objects.filter(pk__gt=after)
        .order_by("pk")
        .values_list("pk", "recipients")[:BATCH]
    ):
        after = rows[-1][0]
        OutboundRecipient.objects.bulk_create(
            OutboundRecipient(email_id=pk, address=address, domain=address.rpartition("@")[2])
            for pk, recipients in rows
            for address in dict.fromkeys(entry["address"].lower() for entry in recipients)
        )


def fill_to_text(apps, schema_editor):
    OutboundEmail = apps.get_model("notifications", "OutboundEmail")
    rows = list(OutboundEmail.objects.only("pk", "recipients"))
    for email in rows:
        email.to_text = " ".join(entry["address"] for entry in email.recipients).lower()
    OutboundEmail.objects.bulk_update(rows, ["to_text"], batch_size=BATCH)


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0006_outbound_bodies"),
    ]

    operations = [
        migrations.CreateModel(
            name="OutboundRecipient",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("address", models.CharField(max_length=254)),
                ("domain", models.CharField(max_length=254)),
                (
                    "email",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="notifications.outboundemail",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(
                        fields=["address"],
                        name="outbox_recipient_address",
                        opclasses=["varchar_pattern_ops"],
                    ),
                    models.Index(fields=["domain"], name="outbox_recipient_domain"),
                ],
            },
        ),
        # Reversed, to_text is back (empty) when fill_to_text runs.
        migrations.RunPython(fill_recipients, fill_to_text),
        migrations.RemoveField(model_name="outboundemail", name="to_text"),
    ]
