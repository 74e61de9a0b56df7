"""The admin shows the settings read-only: editing happens on the settings page, which
validates every field, keeps the password write-only and records the change history."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from .models import SmtpSettings, SmtpSettingsChange


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SmtpSettings)
class SmtpSettingsAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "host", "port", "encryption", "username", "password", "edit"]
    fields = [
        "sender_email",
        "sender_name",
        "reply_to",
        "bounce_address",
        "host",
        "port",
        "encryption",
        "username",
        "password",
        "options",
        "trusted_certificate",
        "updated_at",
        "updated_by",
        "edit",
    ]
    readonly_fields = fields

    @admin.display(description="password")
    def password(self, obj):
        return obj.password_state.label

    @admin.display(description="edit")
    def edit(self, obj):
        return format_html(
            '<a href="{}">Edit on the SMTP settings page</a>', reverse("smtpsettings:page")
        )


@admin.register(SmtpSettingsChange)
class SmtpSettingsChangeAdmin(ReadOnlyAdmin):
    list_display = ["changed_at", "actor", "source", "__str__"]
    list_filter = ["source"]
    readonly_fields = ["changed_at", "changed_by", "actor", "source", "changes"]
