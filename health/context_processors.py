"""The delivery health banner on every console page (templates/base.html)."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from .status import Health, cached_health


def delivery_health(request: HttpRequest) -> dict[str, object]:
    """`delivery_health`: read only when a page shows it, and only for signed-in users (the
    sign-in page and the public invitation pages say nothing about delivery)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"delivery_health": Health()}
    return {"delivery_health": SimpleLazyObject(cached_health)}
