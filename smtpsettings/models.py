from __future__ import annotations

import json

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from . import keyring
from .binding import Binding, binding_of, same_or_upgraded
from .options import OptionsError, SmtpOptions, parse_options
from .plan import ConnectionPlan, Encryption, SmtpConfig, plan

HELP = {
    "sender_email": (
        "The e-mail address shown as the sender. Most SMTP servers need an address that "
        "really exists."
    ),
    "sender_name": 'Optional name shown beside the address, such as "Gateway Manager".',
    "reply_to": (
        "Optional: where replies go, set as Reply-To on every message Gateway Manager sends, "
        "such as support@example.com. Blank: replies go to the sender address."
    ),
    "bounce_address": (
        "Optional: the envelope sender (MAIL FROM), where servers return undeliverable mail, "
        "such as bounces@example.com. The From stays the sender address. Blank: the sender "
        "address."
    ),
    "host": "Host name or IP address of your SMTP server.",
    "port": "The TCP port. The default for a secure connection is 587; 465 means SMTPS.",
    "encryption": (
        "Automatic uses SMTPS on port 465. On port 25 and to localhost it uses STARTTLS when "
        "the server offers it, without requiring a valid certificate, and sends without "
        "encryption only when it is not offered. Everywhere else STARTTLS is required and the "
        "certificate verified. Force SMTPS uses TLS from the first byte on any port."
    ),
    "username": (
        "Fill in the user name if your SMTP server requires authentication. If left blank, "
        "authentication is skipped. With OAuth 2.0: the mailbox to send as."
    ),
    "password": "The password used to authenticate with the server. It is stored encrypted.",
    "options": 'Further options as a JSON object, for example {"verify_peer": false}.',
    "trusted_certificate": (
        "A CA or the server's own certificate (PEM) to trust for this server: the secure "
        'alternative to {"verify_peer": false} for a self-signed certificate.'
    ),
}


class AuthMethod(models.TextChoices):
    NONE = "none", "None"
    PASSWORD = "password", "Password"
    OAUTH2 = "oauth2", "OAuth 2.0"


class OAuthProvider(models.TextChoices):
    MICROSOFT = "microsoft", "Microsoft 365"
    GOOGLE = "google", "Google Workspace"
    OTHER = "other", "Other provider"


class PasswordState(models.TextChoices):
    NOT_SET = "not set"
    SET = "set"
    UNREADABLE = "unreadable"  # no key decrypts it
    OTHER_SERVER = "for other settings"  # sealed for another server or way of verifying it


# The stored secrets: each is sealed for the settings it was entered with (see binding.py).
# A test run carries these and TEST_RUN_EXTRAS besides the editable fields.
SECRETS = {
    "password_token": "Password",
    "oauth_credential_token": "OAuth 2.0 credential",
    "client_key_token": "Client certificate key",
}


def secret_noun(field: str) -> str:
    """A stored secret's name inside a sentence: "the {noun} was removed"."""
    label = SECRETS[field]
    return label if label.startswith("OAuth") else label[0].lower() + label[1:]


TEST_RUN_EXTRAS = ("oauth_credential_token", "oauth_credential_info", "client_key_token")


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
    reply_to = models.EmailField(
        "Reply-To address", max_length=254, blank=True, help_text=HELP["reply_to"]
    )
    bounce_address = models.EmailField(
        "bounce address", max_length=254, blank=True, help_text=HELP["bounce_address"]
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
    # How to sign in. Password with a blank user signs in to nothing, as the help page says.
    auth_method = models.CharField(
        "sign in with", max_length=10, choices=AuthMethod.choices, default=AuthMethod.PASSWORD
    )
    # A Fernet token of {"binding": [...], "password": ...}; never a readable password.
    password_token = models.TextField(blank=True, editable=False)
    oauth_provider = models.CharField(
        "OAuth 2.0 provider", max_length=10, choices=OAuthProvider.choices, blank=True
    )
    oauth_tenant = models.CharField("tenant ID or domain", max_length=200, blank=True)
    oauth_client_id = models.CharField("client ID", max_length=200, blank=True)
    oauth_token_url = models.CharField("token URL", max_length=500, blank=True)
    oauth_scope = models.CharField("scope", max_length=500, blank=True)
    # A Fernet token of {"binding": [...], "kind": ..., "value": ...}: the client secret, the
    # certificate with its private key, the service-account key or the refresh token.
    oauth_credential_token = models.TextField(blank=True, editable=False)
    # What may be shown of that credential: its kind, a certificate's subject, expiry and
    # thumbprint, a service account's e-mail and key ID; never the secret.
    oauth_credential_info = models.JSONField(default=dict, blank=True, editable=False)
    # A TLS client certificate (PEM, public) and its private key, sealed like the password.
    client_certificate = models.TextField(blank=True, editable=False)
    client_key_token = models.TextField(blank=True, editable=False)
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

    def oauth_endpoint(self) -> list[str]:
        """Besides the server, what an OAuth credential is bound to: where tokens come from
        and for whom."""
        return [self.oauth_provider, self.oauth_tenant, self.oauth_token_url, self.oauth_client_id]

    def _extra_binding(self, field: str) -> list[str]:
        return self.oauth_endpoint() if field == "oauth_credential_token" else []

    def seal_secret(self, field: str, value: object) -> None:
        """Store `value` in the secret `field` (one of SECRETS), sealed for these settings."""
        binding = self.binding()
        if binding is None:
            raise ValueError("A secret can only be sealed for settings that make a plan.")
        payload = {"binding": binding.encode(), "extra": self._extra_binding(field)}
        setattr(self, field, keyring.encrypt(json.dumps({**payload, "value": value})))

    def unseal_secret(self, field: str) -> tuple[Binding | None, list, object]:
        """(binding, extra binding, value) as sealed. Raises if no key decrypts it."""
        payload = json.loads(keyring.decrypt(getattr(self, field)))
        value = payload["value"] if "value" in payload else payload.get("password", "")
        return Binding.decode(payload.get("binding")), payload.get("extra", []), value

    def reveal_secret(self, field: str) -> object:
        """The secret, only for the moment it is used. Raises if unreadable, or sealed for
        settings other than these."""
        if not getattr(self, field):
            return ""
        sealed, extra, value = self.unseal_secret(field)
        current = self.binding()
        # same_or_upgraded: port 25 and loopback went from plain to opportunistic TLS.
        if sealed is None or current is None or not same_or_upgraded(sealed, current):
            raise WrongServerPassword()
        if extra != self._extra_binding(field):
            raise WrongServerPassword()
        return value

    def seal_password(self, password: str) -> None:
        self.seal_secret("password_token", password)

    def sealed_binding(self) -> Binding | None:
        """The binding the stored password was sealed for. Raises if unreadable."""
        return self.unseal_secret("password_token")[0] if self.password_token else None

    def reveal_password(self) -> str:
        """The plain password, only for the moment of signing in."""
        return str(self.reveal_secret("password_token"))

    def reseal_secret(self, field: str) -> None:
        """Seal a stored secret for these settings' binding; only after `loosened()` found
        nothing weaker."""
        self.seal_secret(field, self.unseal_secret(field)[2])

    @property
    def password_state(self) -> PasswordState:
        return self.secret_state("password_token")

    def secret_state(self, field: str) -> PasswordState:
        if not getattr(self, field):
            return PasswordState.NOT_SET
        try:
            self.reveal_secret(field)
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
            client_certificate=self.client_certificate,
            auth=self.auth_method,
            oauth_provider=self.oauth_provider,
            oauth_tenant=self.oauth_tenant,
        )

    def connection_plan(self) -> ConnectionPlan | None:
        """The plan, or None while no server is configured. Raises OptionsError."""
        if not self.host:
            return None
        return plan(self.config())


class OAuthAccessToken(models.Model):
    """The access token every worker shares, one row per credential binding. Workers refresh
    it one at a time under the row's lock (single flight); the token is sealed at rest."""

    key = models.CharField(max_length=64, unique=True)  # SHA-256 of the credential binding
    token = models.TextField(blank=True)  # Fernet token of the access token
    expires_at = models.DateTimeField(null=True)
    scope = models.CharField(max_length=500, blank=True)
    fetched_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"OAuth access token {self.key[:12]}…"


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
    # The other sealed secrets and their public parts, as the form had them: the OAuth
    # credential and the client certificate's key. Dropped once the run is over.
    secrets = models.JSONField(default=dict, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)  # Diagnosis.as_dict()
    presented_certificate = models.TextField(blank=True)  # PEM, when it was not trusted

    def __str__(self) -> str:
        return f"Test e-mail to {self.recipient} at {self.created_at:%Y-%m-%d %H:%M}"

    def candidate(self) -> SmtpSettings:
        """The settings to test, never saved."""
        return SmtpSettings(**self.config, password_token=self.password_token, **self.secrets)
