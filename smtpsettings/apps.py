from django.apps import AppConfig


class SmtpSettingsConfig(AppConfig):
    name = "smtpsettings"
    verbose_name = "SMTP settings"
    default_auto_field = "django.db.models.BigAutoField"
