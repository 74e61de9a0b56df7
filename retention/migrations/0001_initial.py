from django.db import migrations, models


def create_the_row(apps, schema_editor):
    apps.get_model("retention", "DailyRun").objects.get_or_create(pk=1)


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="DailyRun",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("started_at", models.DateTimeField(blank=True, null=True)),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("worker", models.CharField(blank=True, max_length=64)),
                ("removed", models.JSONField(blank=True, default=dict)),
            ],
        ),
        migrations.RunPython(create_the_row, migrations.RunPython.noop),
    ]
