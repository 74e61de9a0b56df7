"""Triggering an event: record it, find the enabled integrations that want it, and queue one
message for each through the outbox, all in the caller's transaction. So an event whose
cause rolls back leaves no trace and sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from .backends import OutboxBackend, queue_email
from .emails import Composer, compose
from .events import TEST_EVENT, InvalidEvent, validate
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
    check_source(source)
    validate(event_type, payload, from_outside=source != EventSource.PRODUCT)
    # Read before writing: on SQLite a transaction holds the one write lock from its start.
    integrations = wanting(event_type)
    with transaction.atomic():
        return record(event_type, payload, actor_name(actor), source, integrations)


def check_source(source: str) -> None:
    if source not in EventSource.values or source == EventSource.TEST:
        raise ValueError(f"source must be product, api or command, not {source!r}")


def wanting(event_type: str) -> list[Integration]:
    """The integrations that get mail about `event_type`, read now (a raw query: the ORM's
    compilation doubles its cost, on every API request)."""
    table = connection.ops.quote_name(Integration._meta.db_table)
    integrations = Integration.objects.raw(f"SELECT * FROM {table} ORDER BY name")
    return matching(list(integrations), event_type)


def record(
    event_type: str,
    payload: dict[str, Any],
    actor: str,
    source: str,
    integrations: list[Integration],
) -> Event:
    """Store a validated event and a message for each of `integrations` (the caller's
    transaction). The event's `queued` is how many messages that is."""
    event = Event.objects.create(type=event_type, payload=payload, source=source, actor=actor)
    for integration in integrations:
        _dispatch(event, integration, Category.NOTIFICATION)
    event.queued = len(integrations)
    return event


BULK_CHUNK = 500  # events per round of INSERTs: bounded memory, few statements


def trigger_many(
    event_type: str,
    payloads: Iterable[dict[str, Any]],
    actor: AbstractBaseUser | str | None = None,
    source: str = EventSource.PRODUCT,
) -> list[Event]:
    """trigger() for many payloads of one type at once, set-based: the events, their
    messages and dispatches are each inserted in bulk, and the notification templates are
    rendered once per batch (emails.Composer), not twice per message. The result is what
    calling trigger() per payload gives, but for two things: the events of one call share
    one created_at, and their messages share one outbox batch id (they were one send).

    Every payload is validated before anything is written: an invalid one raises
    events.InvalidEvent, whose errors name its position ("payloads[3].email"), and nothing
    is stored. Runs in the caller's transaction, like trigger()."""
    check_source(source)
    payloads = list(payloads)
    from_outside = source != EventSource.PRODUCT
    for index, payload in enumerate(payloads):
        try:
            validate(event_type, payload, from_outside=from_outside)
        except InvalidEvent as invalid:
            raise InvalidEvent(
                {f"payloads[{index}].{key}": messages for key, messages in invalid.errors.items()}
            ) from None
    name = actor_name(actor)
    created: list[Event] = []
    with transaction.atomic():
        integrations = wanting(event_type)
        for start in range(0, len(payloads), BULK_CHUNK):
            now = timezone.now()
            events = Event.objects.bulk_create(
                [
                    Event(type=event_type, payload=p, source=source, actor=name, created_at=now)
                    for p in payloads[start : start + BULK_CHUNK]
                ]
            )
            created += events
            if integrations:
                _dispatch_many(events, integrations)
    return created


def _dispatch_many(events: list[Event], integrations: list[Integration]) -> None:
    composer = Composer(events[0].type)
    pairs = [(event, integration) for event in events for integration in integrations]
    messages = composer.compose_many(pairs)
    for message, (event, _) in zip(messages, pairs, strict=True):
        message.outbox_category = Category.NOTIFICATION
        message.outbox_cause = event
    rows = OutboxBackend().store(messages)  # one row per message: each has recipients
    Dispatch.objects.bulk_create(
        [
            Dispatch(
                event=event, integration=integration, integration_name=integration.name, email=row
            )
            for row, (event, integration) in zip(rows, pairs, strict=True)
        ]
    )


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
