"""Forms for integrations and API tokens: every mistake is reported at its field."""

from __future__ import annotations

import re
import secrets

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .emails import UNSAFE
from .events import public_types
from .models import Integration

MAX_RECIPIENTS = 1000  # one SMTP transaction each; most servers take at least this many RCPTs
_SEPARATORS = re.compile(r"[\s,;]+")


def split_recipients(text: str) -> tuple[list[str], list[str]]:
    """The addresses in `text` (separated by commas, semicolons, spaces or lines), without
    duplicates (compared case-insensitively), and the entries that are not addresses."""
    valid: dict[str, str] = {}
    invalid: list[str] = []
    for entry in _SEPARATORS.split(text):
        if not entry:
            continue
        try:
            validate_email(entry)
        except ValidationError:
            invalid.append(entry)
        else:
            valid.setdefault(entry.lower(), entry)
    return list(valid.values()), invalid


def _nonce() -> str:
    return secrets.token_urlsafe(16)


def event_choices() -> list[tuple[str, str]]:
    return [(e.type, f"{e.label} ({e.type})") for e in public_types()]


class IntegrationForm(forms.ModelForm):
    recipients = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text="E-mail addresses, separated by commas or one per line. Each message goes to "
        "all of them in one delivery; they do not see each other's addresses.",
    )
    all_events = forms.BooleanField(
        required=False,
        label="All events",
        help_text="Including event types added in later versions.",
    )
    events = forms.MultipleChoiceField(
        required=False,
        choices=event_choices,
        widget=forms.CheckboxSelectMultiple,
        label="Events",
    )

    class Meta:
        model = Integration
        fields = ["name", "recipients", "all_events", "events", "subject_prefix", "enabled"]
        help_texts = {
            "name": "For you: it appears in the e-mails' footer and on the Events page.",
            "subject_prefix": "Optional, e.g. [Gateway prod]. Put before every subject.",
            "enabled": "A disabled integration gets no notifications (test ones still work).",
        }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.initial["recipients"] = "\n".join(self.instance.recipients)

    def clean_recipients(self) -> list[str]:
        addresses, invalid = split_recipients(self.cleaned_data["recipients"])
        if invalid:
            shown = ", ".join(repr(entry) for entry in invalid[:5])
            more = f" and {len(invalid) - 5} more" if len(invalid) > 5 else ""
            raise ValidationError(f"Not an e-mail address: {shown}{more}.")
        if not addresses:
            raise ValidationError("Enter at least one e-mail address.")
        if len(addresses) > MAX_RECIPIENTS:
            raise ValidationError(
                f"At most {MAX_RECIPIENTS} recipients; this list has {len(addresses)}."
            )
        return addresses

    def clean_subject_prefix(self) -> str:
        prefix = self.cleaned_data["subject_prefix"]
        if UNSAFE.search(prefix):
            raise ValidationError(
                "The subject prefix cannot contain line breaks or control characters."
            )
        return prefix.strip()

    def clean(self) -> dict:
        cleaned = super().clean()
        if not cleaned.get("all_events") and not cleaned.get("events"):
            self.add_error("events", "Choose at least one event, or all events.")
        if cleaned.get("all_events"):
            cleaned["events"] = []
        return cleaned


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What uses it, e.g. CI pipeline. Shown in the list and on every event it sends.",
    )
    # One value per rendered form, so that sending the same form twice creates one token.
    nonce = forms.CharField(max_length=32, widget=forms.HiddenInput, initial=_nonce)
