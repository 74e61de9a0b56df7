from pathlib import Path

from django.apps import AppConfig


class GatewayManagerConfig(AppConfig):
    name = "gatewaymgr"
    verbose_name = "Gateway Manager"

    def ready(self) -> None:
        # Before any database connection: the SQLite file must exist owner-only before
        # SQLite creates it. Every process (web, worker, command) checks; all are cheap stats.
        from django.conf import settings

        from . import instance

        databases = [
            Path(database["NAME"])
            for database in settings.DATABASES.values()
            if database["ENGINE"] == "django.db.backends.sqlite3"
            and str(database["NAME"]) not in ("", ":memory:")
            and not str(database["NAME"]).startswith("file:")
        ]
        changed = instance.secure_data(Path(settings.DATA_DIR), databases)
        if changed:
            instance.logger.warning(instance.describe(changed))
