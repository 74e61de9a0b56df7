"""The Outbox search reads an address's or a domain's messages newest first straight from the
index, (address, email_id) and (domain, email_id), instead of every match sorted; they replace
the single-column ones. Events get (source, created_at, id) for the source filter's pages."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0010_outbox_triggers"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="outboundrecipient",
            name="outbox_recipient_address",
        ),
        migrations.RemoveIndex(
            model_name="outboundrecipient",
            name="outbox_recipient_domain",
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(fields=["source", "created_at", "id"], name="event_source_newest"),
        ),
        migrations.AddIndex(
            model_name="outboundrecipient",
            index=models.Index(
                fields=["address", "email"],
                name="outbox_recipient_address_id",
                opclasses=["varchar_pattern_ops", "int8_ops"],
            ),
        ),
        migrations.AddIndex(
            model_name="outboundrecipient",
            index=models.Index(fields=["domain", "email"], name="outbox_recipient_domain_id"),
        ),
    ]
