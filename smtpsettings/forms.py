"""The settings form: the one place that validates what the page and the command accept."""

from __future__ import annotations

import json
import re
from typing import Any

from django import forms
from django.contrib.auth.base_user import AbstractBaseUser

from . import store
from .certificates import InvalidCertificate, normalize_pem, parse_pem_bundle
from .hostnames import InvalidHost, normalize_host
from .models import HELP, SmtpSettings
from .options import OptionsError, decode_options_json, parse_options

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PORT_ERROR = "Enter a port from 1 to 65535, usually 587 (STARTTLS), 465 (SMTPS) or 25."


def _no_control_characters(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise forms.ValidationError(f"The {what} cannot contain line breaks or control characters.")
    return value


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

    class Meta:
        model = SmtpSettings
        fields = [
            "sender_email",
            "sender_name",
            "host",
            "port",
            "encryption",
            "username",
            "options",
            "trusted_certificate",
        ]
        widgets = {"encryption": forms.RadioSelect}
        error_messages = {
            "port": {"invalid": PORT_ERROR, "min_value": PORT_ERROR, "max_value": PORT_ERROR},
            "sender_email": {
                "invalid": "Enter a complete e-mail address, such as gateway@example.com."
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

    def clean_sender_name(self) -> str:
        return _no_control_characters(self.cleaned_data["sender_name"], "sender name")

    def clean_host(self) -> str:
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

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("password") and cleaned.get("clear_password"):
            self.add_error(
                "clear_password",
                "Either enter a new password or clear the stored one, not both.",
            )
        return cleaned

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
        return record

    def save(  # type: ignore[override]
        self, *, actor: AbstractBaseUser | None, actor_name: str, source: str
    ) -> store.SaveResult:
        return store.save(
            self.instance,
            self.before,
            new_password=self.cleaned_data["password"],
            clear_password=self.cleaned_data["clear_password"],
            actor=actor,
            actor_name=actor_name,
            source=source,
        )


def form_data(values: dict[str, Any]) -> dict[str, Any]:
    """Editable values (a snapshot, or a test run's config) as the page would post them."""
    data = {name: values[name] for name in store.EDITABLE}
    data["options"] = json.dumps(values["options"]) if values["options"] else ""
    return data


class RecipientForm(forms.Form):
    test_to = forms.EmailField(
        label="Send a test e-mail to",
        required=True,
        error_messages={"required": "Enter the address the test e-mail goes to."},
    )
