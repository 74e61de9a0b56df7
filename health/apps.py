from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Delivery health"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from notifications import deliverystats
        from smtpsettings.tokencache import token_refreshed

        # Counted in the worker's memory, flushed to the database by its heartbeat.
        token_refreshed.connect(deliverystats.token_refresh_seen, dispatch_uid="health-token")
