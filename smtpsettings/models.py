from __future__ import annotations

import json

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from . import keyring
from .binding import Binding, binding_of, seal_payload
from .options import OptionsError, SmtpOptions, parse_options
from .plan import ConnectionPlan, Encryption, SmtpConfig, plan

HELP = {
    "sender_email": (
        "The e-mail address shown as the sender. Most SMTP servers need an address that "
        "really exists."
    ),
    "sender_name": 'Optional name shown beside the address, such as "Gateway Manager".',
    "host": "Host name or IP address of your SMTP server.",
    "port": "The TCP port. The default for a secure connection is 587; 465 means SMTPS.",
    "encryption": (
        "Automatic always uses STARTTLS unless the server is localhost or the port is 25; "
        "with port 465 it switches to SMTPS. Force SMTPS uses TLS from the first byte on any "
        "port."
    ),
    "username": (
        "Fill in the user name if your SMTP server requires authentication. If left blank, "
        "authentication is skipped."
    ),
    "password": "The password used to authenticate with the server. It is stored encrypted.",
    "options": 'Further options as a JSON object, for example {"verify_peer": false}.',
    "trusted_certificate": (
        "A CA or the server's own certificate (PEM) to trust for this server: the secure "
        'alternative to {"verify_peer": false} for a self-signed certificate.'
    ),
}


class PasswordState(models.TextChoices):
    NOT_SET = "not set"
    SET = "set"
    UNREADABLE = "unreadable"  # no key decrypts it
    OTHER_SERVER = "for other settings"  # sealed for another server or way of verifying it


class WrongServerPassword(Exception):
    def __init__(self) -> None:
        super().__init__(
            "The stored SMTP password was saved for another server, port, user or way of "
            "verifying the server, and goes only where it was meant to. Enter the password again."
        )


class SmtpSettings(models.Model):
    """The one SMTP settings record. Read it with `smtpsettings.store.load()`."""

    sender_email = models.EmailField(
        "sender e-mail address", max_length=254, blank=True, help_text=HELP["sender_email"]
    )
    sender_name = models.CharField(
        "sender name", max_length=200, blank=True, help_text=HELP["sender_name"]
    )
    host = models.CharField("server", max_length=253, blank=True, help_text=HELP["host"])
    port = models.PositiveIntegerField(
        default=587,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text=HELP["port"],
    )
    encryption = models.CharField(
        max_length=8,
        choices=[(Encryption.AUTOMATIC, "Automatic"), (Encryption.FORCE_SMTPS, "Force SMTPS")],
        default=Encryption.AUTOMATIC,
        help_text=HELP["encryption"],
    )
    username = models.CharField("user", max_length=254, blank=True, help_text=HELP["username"])
    # A Fernet token of {"server": ..., "password": ...}; never a readable password.
    password_token = models.TextField(blank=True, editable=False)
    options = models.JSONField(
        "options (json)", default=dict, blank=True, help_text=HELP["options"]
    )
    trusted_certificate = models.TextField(blank=True, help_text=HELP["trusted_certificate"])
    updated_at = models.DateTimeField(null=True, editable=False)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, editable=False
    )

    class Meta:
        verbose_name = verbose_name_plural = "SMTP settings"
        constraints = [
            models.CheckConstraint(condition=models.Q(pk=1), name="smtp_settings_singleton")
        ]

    def __str__(self) -> str:
        return "SMTP settings"

    def binding(self) -> Binding | None:
        """Where a password may go and how that server is verified; None while the settings
        cannot make a plan (no server, or invalid options): then no password is revealed."""
        try:
            plan = self.connection_plan()
        except OptionsError:
            return None
        return binding_of(plan) if plan else None

    def seal_password(self, password: str) -> None:
        binding = self.binding()
        if binding is None:
            raise ValueError("A password can only be sealed for settings that make a plan.")
        self.password_token = keyring.encrypt(seal_payload(binding, password))

    def _unseal(self) -> tuple[Binding | None, str]:
        payload = json.loads(keyring.decrypt(self.password_token))
        return Binding.decode(payload.get("binding")), payload["password"]

    def sealed_binding(self) -> Binding | None:
        """The binding the stored password was sealed for. Raises if unreadable."""
        return self._unseal()[0] if self.password_token else None

    def reveal_password(self) -> str:
        """The plain password, only for the moment of signing in. Raises if unreadable or
        sealed for a binding other than these settings' own."""
        if not self.password_token:
            return ""
        sealed, password = self._unseal()
        if sealed is None or sealed != self.binding():
            raise WrongServerPassword()
        return password

    def reseal_password(self) -> None:
        """Seal the stored password for these settings' binding; only after `loosened()`
        found nothing weaker."""
        _, password = self._unseal()
        self.seal_password(password)

    @property
    def password_state(self) -> PasswordState:
        if not self.password_token:
            return PasswordState.NOT_SET
        try:
            self.reveal_password()
        except keyring.UndecryptablePassword:
            return PasswordState.UNREADABLE
        except WrongServerPassword:
            return PasswordState.OTHER_SERVER
        return PasswordState.SET

    def smtp_options(self) -> SmtpOptions:
        return parse_options(self.options)

    def config(self) -> SmtpConfig:
        return SmtpConfig(
            host=self.host,
            port=self.port,
            encryption=Encryption(self.encryption),
            username=self.username,
            options=self.smtp_options(),
            trusted_certificate=self.trusted_certificate,
        )

    def connection_plan(self) -> ConnectionPlan | None:
        """The plan, or None while no server is configured. Raises OptionsError."""
        if not self.host:
            return None
        return plan(self.config())


class SmtpSettingsChange(models.Model):
    """One save of the settings: who, when, which fields. Never a password value."""

    changed_at = models.DateTimeField(db_index=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor = models.CharField(max_length=200)  # kept when the user is deleted
    source = models.CharField(max_length=20)  # "web page", "command line"
    # [{"field": "port", "label": "Port", "old": "25", "new": "587"}]
    changes = models.JSONField(default=list)

    class Meta:
        ordering = ["-changed_at", "-id"]
        verbose_name = "SMTP settings change"

    def __str__(self) -> str:
        fields = ", ".join(change["label"] for change in self.changes)
        return f"{self.actor} changed {fields}"


class SmtpTestRun(models.Model):
    """One "Send test e-mail", run by a task worker so no web request talks to SMTP.

    It holds the settings as the form had them (saved or not); a password typed for the test
    is sealed like the stored one and dropped once the run is over.
    """

    created_at = models.DateTimeField(auto_now_add=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    recipient = models.EmailField()
    config = models.JSONField()  # the editable fields, as the form had them
    password_token = models.TextField(blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)  # Diagnosis.as_dict()
    presented_certificate = models.TextField(blank=True)  # PEM, when it was not trusted

    def __str__(self) -> str:
        return f"Test e-mail to {self.recipient} at {self.created_at:%Y-%m-%d %H:%M}"

    def candidate(self) -> SmtpSettings:
        """The settings to test, never saved."""
        return SmtpSettings(**self.config, password_token=self.password_token)
