"""Everything the product sends and why: the outbox, integrations and events.

`trigger()` is the product's way to say that something happened; the import happens inside
the function because this package is imported while Django loads its apps, before models
may be touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .events import InvalidEvent  # pure data and functions: safe while apps load

__all__ = ["InvalidEvent", "trigger"]

if TYPE_CHECKING:
    from .models import Event


def trigger(
    event_type: str, payload: dict[str, Any], actor: Any = None, source: str = "product"
) -> Event:
    """Record an event and queue one e-mail per matching integration, in the caller's
    transaction. `actor` is a user, a name or None. Raises notifications.events.InvalidEvent
    (with `.errors`, a dict of field -> messages) for an unknown type or a bad payload."""
    from .triggering import trigger as _trigger

    return _trigger(event_type, payload, actor=actor, source=source)
