"""What notifications does when other parts of the product change."""

from __future__ import annotations

from django.db import transaction

from .backends import enqueue_delivery
from .delivery import retry_soon


def retry_with_new_settings(sender, **kwargs) -> None:
    """New SMTP settings may fix what made messages wait: try them again soon."""
    if retry_soon():
        transaction.on_commit(enqueue_delivery)


def notify_settings_changed(sender, changes: list[dict[str, str]], **kwargs) -> None:
    """Fire smtp.settings_changed in the saving transaction: the labels of the changed fields
    only, never a value, so a password cannot get into an e-mail."""
    from .triggering import trigger

    trigger(
        "smtp.settings_changed",
        {
            "fields": [change["label"] for change in changes],
            "changed_by": kwargs.get("actor_name") or "",
        },
        actor=kwargs.get("actor_name") or "",
    )
