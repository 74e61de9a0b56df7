"""The settings form: the one place that validates what the page and the command accept."""

from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.contrib.auth.base_user import AbstractBaseUser

from . import store
from .certificates import (
    InvalidCertificate,
    normalize_pem,
    parse_client_certificate,
    parse_pem_bundle,
)
from .hostnames import InvalidHost, normalize_host
from .models import HELP, AuthMethod, OAuthProvider, SmtpSettings
from .oauth import InvalidCredential, describe_credential
from .options import OptionsError, decode_options_json, parse_options
from .providers import CREDENTIAL_LABELS, FIELD_MESSAGES, PROVIDERS

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PORT_ERROR = "Enter a port from 1 to 65535, usually 587 (STARTTLS), 465 (SMTPS) or 25."


def _no_control_characters(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise forms.ValidationError(f"The {what} cannot contain line breaks or control characters.")
    return value


# Form fields that carry a secret: never in an error report (sensitive_post_parameters).
SECRET_FIELDS = (
    "password",
    "oauth_client_secret",
    "oauth_certificate",
    "oauth_service_account",
    "oauth_refresh_token",
    "client_certificate_pem",
)
MAX_UPLOAD = 256_000  # characters: a key file, a certificate chain, a service-account key


class WriteOnlyTextarea(forms.Textarea):
    """A textarea for a secret (a private key): what was typed is never rendered back."""

    def format_value(self, value: Any) -> None:
        return None


def _secret_text(widget: forms.Widget, **kwargs: Any) -> forms.CharField:
    return forms.CharField(
        required=False, strip=True, max_length=MAX_UPLOAD, widget=widget, **kwargs
    )


def _read_upload(upload: Any, what: str) -> str:
    if upload.size > MAX_UPLOAD:
        raise forms.ValidationError(f"The {what} file is larger than {MAX_UPLOAD:,} bytes.")
    try:
        return upload.read().decode("utf-8")
    except UnicodeDecodeError:
        raise forms.ValidationError(f"The {what} file is not text (PEM or JSON).") from None


class SmtpSettingsForm(forms.ModelForm):
    password = forms.CharField(
        required=False,
        strip=False,
        max_length=1024,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=HELP["password"],
    )
    clear_password = forms.BooleanField(required=False, label="Clear the stored password")
    options = forms.CharField(
        label="Options (json)",
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
        help_text=HELP["options"],
    )
    trusted_certificate = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false", "class": "mono"}),
        help_text=HELP["trusted_certificate"],
    )

    oauth_client_secret = _secret_text(
        forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        label="Client secret",
    )
    oauth_secret_expires = forms.DateField(
        required=False,
        label="Client secret expires on",
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text="Optional: the page warns before this day.",
    )
    oauth_certificate = _secret_text(
        WriteOnlyTextarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
        label="Certificate with its private key (PEM)",
    )
    oauth_certificate_file = forms.FileField(required=False, label="…or upload the PEM file")
    oauth_service_account = _secret_text(
        WriteOnlyTextarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
        label="Service account key (JSON)",
    )
    oauth_service_account_file = forms.FileField(
        required=False, label="…or upload the JSON key file"
    )
    oauth_refresh_token = _secret_text(
        forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        label="Refresh token",
    )
    clear_oauth_credential = forms.BooleanField(
        required=False, label="Remove the stored OAuth 2.0 credential"
    )
    client_certificate_pem = _secret_text(
        WriteOnlyTextarea(attrs={"rows": 4, "spellcheck": "false", "class": "mono"}),
        label="Client certificate with its private key (PEM)",
        help_text="Optional: for servers that recognise the sender by a TLS client certificate.",
    )
    client_certificate_file = forms.FileField(required=False, label="…or upload the PEM file")
    clear_client_certificate = forms.BooleanField(
        required=False, label="Remove the stored client certificate"
    )

    class Meta:
        model = SmtpSettings
        fields = [
            "sender_email",
            "sender_name",
            "reply_to",
            "bounce_address",
            "host",
            "port",
            "encryption",
            "auth_method",
            "username",
            "oauth_provider",
            "oauth_tenant",
            "oauth_client_id",
            "oauth_token_url",
            "oauth_scope",
            "options",
            "trusted_certificate",
        ]
        widgets = {
            "encryption": forms.RadioSelect,
            "auth_method": forms.RadioSelect,
            "oauth_provider": forms.RadioSelect,
        }
        error_messages = {
            "port": {"invalid": PORT_ERROR, "min_value": PORT_ERROR, "max_value": PORT_ERROR},
            "sender_email": {
                "invalid": "Enter a complete e-mail address, such as gateway@example.com."
            },
            # Validated like the sender: one bare address, so no display name, list or line
            # break can reach a header or the envelope.
            "reply_to": {
                "invalid": "Enter a complete e-mail address, such as support@example.com."
            },
            "bounce_address": {
                "invalid": "Enter a complete e-mail address, such as bounces@example.com."
            },
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.before = store.snapshot(self.instance)
        self.fields["sender_email"].required = True
        self.fields["host"].required = True
        self.fields["host"].error_messages["required"] = (
            "Enter the SMTP server's host name or IP address."
        )
        self.fields["sender_email"].error_messages["required"] = (
            "Enter the address mail is sent from."
        )
        self.initial["options"] = json.dumps(self.instance.options) if self.instance.options else ""
        self.fields["host"].required = False  # a provider's preset may fill it; see clean()
        self.fields["auth_method"].required = False  # absent means "password", as before
        self.fields["oauth_provider"].choices = OAuthProvider.choices
        self.fields["oauth_provider"].required = False
        self.new_secrets: dict[str, Any] = {}  # field -> value to seal, for save()
        self.cleared_secrets: list[str] = []
        self.warnings: list[str] = []  # accepted, but worth saying (an expired certificate)

    def clean_sender_name(self) -> str:
        return _no_control_characters(self.cleaned_data["sender_name"], "sender name")

    def clean_host(self) -> str:
        if not self.cleaned_data["host"].strip():
            return ""  # required unless a provider presets it: see clean()
        try:
            return normalize_host(self.cleaned_data["host"])
        except InvalidHost as error:
            raise forms.ValidationError(str(error)) from None

    def clean_username(self) -> str:
        return _no_control_characters(self.cleaned_data["username"], "user name")

    def clean_options(self) -> dict[str, Any]:
        text = self.cleaned_data["options"]
        try:
            values = decode_options_json(text)
            parse_options(values)
        except OptionsError as error:
            raise forms.ValidationError(error.messages) from None
        return values

    def clean_trusted_certificate(self) -> str:
        text = normalize_pem(self.cleaned_data["trusted_certificate"])
        if text:
            try:
                parse_pem_bundle(text)
            except InvalidCertificate as error:
                raise forms.ValidationError(str(error)) from None
        return text

    def clean_oauth_token_url(self) -> str:
        url = self.cleaned_data["oauth_token_url"].strip()
        if url and not url.startswith("https://"):
            raise forms.ValidationError(
                "Enter an https:// URL: the credential is sent to it, so it must be encrypted."
            )
        return url

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("password") and cleaned.get("clear_password"):
            self.add_error(
                "clear_password",
                "Either enter a new password or clear the stored one, not both.",
            )
        cleaned["auth_method"] = cleaned.get("auth_method") or AuthMethod.PASSWORD
        self.instance.auth_method = cleaned["auth_method"]
        if cleaned["auth_method"] == AuthMethod.OAUTH2:
            self._clean_oauth(cleaned)
        elif cleaned.get("clear_oauth_credential") and self.instance.oauth_credential_token:
            self.cleared_secrets.append("oauth_credential_token")
        self._clean_client_certificate(cleaned)
        if not cleaned.get("host") and "host" not in self.errors:
            self.add_error("host", self.fields["host"].error_messages["required"])
        return cleaned

    def _clean_oauth(self, cleaned: dict[str, Any]) -> None:
        provider = cleaned.get("oauth_provider")
        if not provider:
            self.add_error("oauth_provider", "Choose who issues the tokens.")
            return
        spec = PROVIDERS[provider]
        if not cleaned.get("username"):
            self.add_error("username", "Enter the mailbox to send as, such as alerts@contoso.com.")
        for name in spec.needs:
            if not cleaned.get(name):
                self.add_error(name, FIELD_MESSAGES[name])
        if not cleaned.get("host") and spec.host and "host" not in self.errors:
            # The provider's server, offered as the preset; the field stays editable.
            cleaned["host"] = self.instance.host = spec.host
            cleaned["port"] = self.instance.port = spec.port
        accepted = " or ".join(CREDENTIAL_LABELS[kind] for kind in spec.credentials)
        entered = self._entered_credentials(cleaned)
        wrong = [kind for kind in entered if kind not in spec.credentials]
        if wrong:
            self.add_error(
                None, f"{spec.label} takes {accepted}, not {CREDENTIAL_LABELS[wrong[0]]}."
            )
            return
        if len(entered) > 1:
            self.add_error(None, "Enter one OAuth 2.0 credential, not several.")
            return
        if entered:
            ((kind, (field, value)),) = entered.items()
            try:
                info = describe_credential(kind, value)
            except InvalidCredential as error:
                self.add_error(field, str(error))
                return
            if kind == "client_secret" and cleaned.get("oauth_secret_expires"):
                info["expires"] = cleaned["oauth_secret_expires"].isoformat()
            self.new_secrets["oauth_credential_token"] = {"kind": kind, "value": value}
            self.instance.oauth_credential_info = {"kind": kind, **info}
        elif cleaned.get("clear_oauth_credential") or not self.instance.oauth_credential_token:
            self.add_error(None, f"Enter {accepted} to sign in with {spec.label}.")
        elif (stored := self.instance.oauth_credential_info.get("kind")) not in spec.credentials:
            self.add_error(
                None,
                f"The stored credential is {CREDENTIAL_LABELS.get(stored, 'of another kind')}, "
                f"which {spec.label} does not take: enter {accepted}.",
            )

    def _entered_credentials(self, cleaned: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """kind -> (field, value) for each credential this submission enters."""
        entered = {}
        for kind, field, upload in (
            ("client_secret", "oauth_client_secret", None),
            ("certificate", "oauth_certificate", "oauth_certificate_file"),
            ("service_account", "oauth_service_account", "oauth_service_account_file"),
            ("refresh_token", "oauth_refresh_token", None),
        ):
            value = cleaned.get(field) or ""
            if upload and cleaned.get(upload):
                try:
                    value = _read_upload(cleaned[upload], CREDENTIAL_LABELS[kind][2:])
                except forms.ValidationError as error:
                    self.add_error(upload, error)
                    continue
                field = upload
            if value.strip():
                entered[kind] = (field, value.strip())
        return entered

    def _clean_client_certificate(self, cleaned: dict[str, Any]) -> None:
        text = cleaned.get("client_certificate_pem") or ""
        field = "client_certificate_pem"
        if cleaned.get("client_certificate_file"):
            try:
                text = _read_upload(cleaned["client_certificate_file"], "client certificate")
            except forms.ValidationError as error:
                self.add_error("client_certificate_file", error)
                return
            field = "client_certificate_file"
        if text.strip() and cleaned.get("clear_client_certificate"):
            self.add_error(
                "clear_client_certificate",
                "Either enter a client certificate or remove the stored one, not both.",
            )
        elif text.strip():
            try:
                client = parse_client_certificate(text)
            except InvalidCertificate as error:
                self.add_error(field, str(error))
                return
            self.instance.client_certificate = client.certificate_pem
            self.new_secrets["client_key_token"] = client.key_pem
            self.warnings.extend(client.warnings)
        elif cleaned.get("clear_client_certificate") and self.instance.client_certificate:
            self.instance.client_certificate = ""
            self.cleared_secrets.append("client_key_token")

    def adopt_password(self, typed: str) -> bool:
        """Save `typed` (a password held from a test of these values) unless this submission
        enters or clears a password itself."""
        if not typed or self.cleaned_data["password"] or self.cleaned_data["clear_password"]:
            return False
        self.cleaned_data["password"] = typed
        return True

    def candidate(self) -> SmtpSettings:
        """The settings as the form has them, not saved: what "Send test e-mail" uses. The
        stored password only comes along while nothing it is bound to differs (see binding)."""
        record = self.instance
        if self.cleaned_data["password"]:
            record.seal_password(self.cleaned_data["password"])
        elif self.cleaned_data["clear_password"]:
            record.password_token = ""
        for field in self.cleared_secrets:
            setattr(record, field, "")
        for field, value in self.new_secrets.items():
            record.seal_secret(field, value)
        return record

    def save(  # type: ignore[override]
        self, *, actor: AbstractBaseUser | None, actor_name: str, source: str
    ) -> store.SaveResult:
        return store.save(
            self.instance,
            self.before,
            new_password=self.cleaned_data["password"],
            clear_password=self.cleaned_data["clear_password"],
            new_secrets=self.new_secrets,
            cleared_secrets=self.cleared_secrets,
            actor=actor,
            actor_name=actor_name,
            source=source,
        )


def form_data(values: dict[str, Any]) -> dict[str, Any]:
    """Editable values (a snapshot, or a test run's config) as the page would post them."""
    # .get: a test run saved before a field existed lacks it.
    data = {name: values.get(name, "") for name in store.EDITABLE}
    data["options"] = json.dumps(values["options"]) if values["options"] else ""
    return data


class RecipientForm(forms.Form):
    test_to = forms.EmailField(
        label="Send a test e-mail to",
        required=True,
        error_messages={"required": "Enter the address the test e-mail goes to."},
    )
