from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    verbose_name = "Notifications"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from smtpsettings.signals import settings_saved

        from .receivers import notify_settings_changed, retry_with_new_settings
        from .triggers import ensure_triggers

        settings_saved.connect(retry_with_new_settings, dispatch_uid="outbox-retry-soon")
        settings_saved.connect(notify_settings_changed, dispatch_uid="event-settings-changed")
        # SQLite drops the outbox's triggers when a migration rebuilds the table.
        post_migrate.connect(ensure_triggers, sender=self, dispatch_uid="outbox-count-triggers")
