"""What notifications does when other parts of the product change."""

from __future__ import annotations

from django.db import transaction

from .backends import enqueue_delivery
from .delivery import retry_soon


def retry_with_new_settings(sender, **kwargs) -> None:
    """New SMTP settings may fix what made messages wait: try them again soon."""
    if retry_soon():
        transaction.on_commit(enqueue_delivery)
