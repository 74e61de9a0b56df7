"""Retention: what the product keeps, and for how long."""

from __future__ import annotations


def apply_if_due() -> None:
    """Called by every worker's housekeeping; applies the retention policy once a day."""
