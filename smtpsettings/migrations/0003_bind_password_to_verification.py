"""Seal a stored password for the full binding (server, user, encryption, verification, trusted
certificate, pin) instead of the older "host:port:user". The row is as the administrator saved
it, so its binding now is the one the password was entered for."""

import json

from django.db import migrations


def rebind(apps, schema_editor):
    from smtpsettings import keyring
    from smtpsettings.models import SmtpSettings

    for row in apps.get_model("smtpsettings", "SmtpSettings").objects.exclude(password_token=""):
        try:
            payload = json.loads(keyring.decrypt(row.password_token))
        except keyring.UndecryptablePassword:
            continue  # the page already asks for it again
        if payload.get("server") != f"{row.host}:{row.port}:{row.username}":
            continue  # already rebound, or sealed for other settings: never widen it
        record = SmtpSettings(
            host=row.host,
            port=row.port,
            encryption=row.encryption,
            username=row.username,
            options=row.options,
            trusted_certificate=row.trusted_certificate,
        )
        if record.binding() is None:
            continue
        record.seal_password(payload["password"])
        row.password_token = record.password_token
        row.save(update_fields=["password_token"])


class Migration(migrations.Migration):
    dependencies = [("smtpsettings", "0002_test_runs")]
    operations = [migrations.RunPython(rebind, migrations.RunPython.noop)]
