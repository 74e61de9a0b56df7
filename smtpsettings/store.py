"""Reading and saving the one settings record, with its change history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from .binding import loosened
from .certificates import InvalidCertificate, parse_pem_bundle
from .keyring import UndecryptablePassword
from .models import SECRETS, SmtpSettings, SmtpSettingsChange, secret_noun
from .signals import settings_saved

# The fields an administrator edits, in page order, with the labels the history shows.
EDITABLE = {
    "sender_email": "Sender e-mail address",
    "sender_name": "Sender name",
    "reply_to": "Reply-To address",
    "bounce_address": "Bounce address",
    "host": "Server",
    "port": "Port",
    "encryption": "Encryption",
    "auth_method": "Authentication",
    "username": "User",
    "oauth_provider": "OAuth 2.0 provider",
    "oauth_tenant": "Tenant",
    "oauth_client_id": "Client ID",
    "oauth_token_url": "Token URL",
    "oauth_scope": "Scope",
    "options": "Options",
    "trusted_certificate": "Trusted certificate",
    "client_certificate": "Client certificate",
}


def load() -> SmtpSettings:
    """The settings record, created with defaults on first read."""
    settings, _ = SmtpSettings.objects.get_or_create(pk=1)
    return settings


def snapshot(settings: SmtpSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in EDITABLE}


@dataclass
class SaveResult:
    changes: list[dict[str, str]] = field(default_factory=list)
    # Why the stored password was dropped: what this save loosened, with no password entered.
    password_dropped: list[str] = field(default_factory=list)
    # The same for the other stored secrets: field -> what was loosened.
    secrets_dropped: dict[str, list[str]] = field(default_factory=dict)


def save(
    settings: SmtpSettings,
    before: dict[str, Any],
    *,
    new_password: str = "",
    clear_password: bool = False,
    new_secrets: dict[str, Any] | None = None,
    cleared_secrets: list[str] | None = None,
    actor: AbstractBaseUser | None,
    actor_name: str,
    source: str,
) -> SaveResult:
    """Save `settings` (already validated and changed in memory) and record what changed.

    `before` is the snapshot taken when editing began, so the history names exactly the
    fields this save changed.
    """
    result = SaveResult(changes=differences(before, snapshot(settings)))
    new_secrets = {"password_token": new_password, **(new_secrets or {})}
    cleared = {*(cleared_secrets or []), *(["password_token"] if clear_password else [])}
    for secret, label in SECRETS.items():
        change, reasons = _settle_secret(
            settings, secret, new=new_secrets.get(secret), clear=secret in cleared
        )
        if secret == "password_token":
            result.password_dropped = reasons
        elif reasons:
            result.secrets_dropped[secret] = reasons
        if change:
            name = "password" if secret == "password_token" else secret
            result.changes.append(
                {"field": name, "label": label, "old": change[0], "new": change[1]}
            )
    if not result.changes:
        return result
    settings.updated_at = timezone.now()
    settings.updated_by = actor if actor is not None and actor.is_authenticated else None
    with transaction.atomic():
        settings.save()
        SmtpSettingsChange.objects.create(
            changed_at=settings.updated_at,
            changed_by=settings.updated_by,
            actor=actor_name,
            source=source,
            changes=result.changes,
        )
        settings_saved.send(
            sender=SmtpSettings,
            settings=settings,
            changes=result.changes,
            actor_name=actor_name,
            source=source,
        )
    return result


def _settle_secret(
    settings: SmtpSettings, field: str, *, new: Any, clear: bool
) -> tuple[tuple[str, str] | None, list[str]]:
    """What a save does to one stored secret: (old and new state for the history, or None;
    what was loosened when it was dropped)."""
    had = bool(getattr(settings, field))
    if clear:
        setattr(settings, field, "")
        return (("set", "removed") if had else None), []
    if new:
        settings.seal_secret(field, new)
        return (("set", "replaced") if had else ("not set", "set")), []
    reasons = rebind_secret(settings, field) if had else []
    return (("set", "removed: " + "; ".join(reasons)) if reasons else None), reasons


def rebind_secret(settings: SmtpSettings, field: str) -> list[str]:
    """Keep a stored secret only if the new settings loosen nothing it was bound to, and seal
    it for them; otherwise drop it. Returns what was loosened."""
    try:
        sealed, extra, _ = settings.unseal_secret(field)
    except UndecryptablePassword:
        return []  # kept as it is: the page already asks for it again
    current = settings.binding()
    if sealed == current and extra == settings._extra_binding(field):
        return []
    reasons = ["it was sealed by an older version"] if sealed is None else []
    if current is None:
        reasons.append("the settings make no connection plan")
    elif sealed is not None:
        reasons = loosened(sealed, current)
    if extra != settings._extra_binding(field):
        reasons.append("the provider, tenant, token URL or client ID changed")
    if reasons:
        setattr(settings, field, "")
    else:
        settings.reseal_secret(field)
    return reasons


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, str]]:
    """The fields that differ, as the history shows them."""
    return [
        {
            "field": name,
            "label": label,
            "old": display_value(name, before[name]),
            "new": display_value(name, after[name]),
        }
        for name, label in EDITABLE.items()
        if before[name] != after[name]
    ]


def dropped_password_text(reasons: list[str]) -> str:
    return (
        f"The stored password was removed because {'; '.join(reasons)}: a password is only "
        "sent to the server it was entered for, verified the way it was then. Enter it again "
        "if this server needs one."
    )


def dropped_secret_text(field: str, reasons: list[str]) -> str:
    return (
        f"The stored {secret_noun(field)} was removed because {'; '.join(reasons)}: "
        "it is only used with the settings it was entered for. Enter it again."
    )


def display_value(name: str, value: Any) -> str:
    """A field's value as the history shows it: short, and never a secret."""
    if value in ("", None, {}):
        return "(blank)"
    if name == "options":
        return json.dumps(value, sort_keys=True)
    if name in ("encryption", "auth_method", "oauth_provider"):
        return dict(SmtpSettings._meta.get_field(name).flatchoices).get(value, value)
    if name in ("trusted_certificate", "client_certificate"):
        try:
            infos = parse_pem_bundle(value)
        except InvalidCertificate:
            return "(unreadable certificate)"
        return "; ".join(f"{info.subject} (SHA-256 {info.sha256[:23]}…)" for info in infos)
    return str(value)


def recent_changes(limit: int = 10) -> list[SmtpSettingsChange]:
    return list(SmtpSettingsChange.objects.select_related("changed_by")[:limit])
