"""Triggering an event: record it, find the enabled integrations that want it, and queue one
message for each through the outbox, all in the caller's transaction. So an event whose
cause rolls back leaves no trace and sends nothing.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction

from .backends import queue_email
from .emails import compose
from .events import TEST_EVENT, validate
from .models import Category, Dispatch, Event, EventSource, Integration


def actor_name(actor: AbstractBaseUser | str | None) -> str:
    if actor is None:
        return ""
    if isinstance(actor, str):
        return actor[:150]
    return actor.get_username() if actor.is_authenticated else ""


def matching(integrations: list[Integration], event_type: str) -> list[Integration]:
    """The integrations that get mail about `event_type`: enabled, subscribed to it, and
    with someone to send to."""
    return [i for i in integrations if i.enabled and i.recipients and i.wants(event_type)]


def trigger(
    event_type: str,
    payload: dict[str, Any],
    actor: AbstractBaseUser | str | None = None,
    source: str = EventSource.PRODUCT,
) -> Event:
    """Record an event and queue its notifications. Raises events.InvalidEvent (with field
    errors) for an unknown type, a payload that does not fit it, or, from the API or the
    command, a type only the product itself raises."""
    if source not in EventSource.values or source == EventSource.TEST:
        raise ValueError(f"source must be product, api or command, not {source!r}")
    validate(event_type, payload, from_outside=source != EventSource.PRODUCT)
    with transaction.atomic():
        event = Event.objects.create(
            type=event_type, payload=payload, source=source, actor=actor_name(actor)
        )
        for integration in matching(list(Integration.objects.all()), event_type):
            _dispatch(event, integration, Category.NOTIFICATION)
    return event


def send_test(integration: Integration, actor: AbstractBaseUser | str | None = None) -> Dispatch:
    """Queue a test notification to one integration, enabled or not: checking the recipients
    before turning it on is the point."""
    name = actor_name(actor)
    payload = {"integration": integration.name, "requested_by": name}
    validate(TEST_EVENT, payload, allow_internal=True)
    with transaction.atomic():
        event = Event.objects.create(
            type=TEST_EVENT, payload=payload, source=EventSource.TEST, actor=name
        )
        return _dispatch(event, integration, Category.TEST)


def _dispatch(event: Event, integration: Integration, category: str) -> Dispatch:
    email = queue_email(compose(event, integration), category=category, cause=event)
    return Dispatch.objects.create(
        event=event, integration=integration, integration_name=integration.name, email=email
    )
