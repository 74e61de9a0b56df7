"""emails.Composer.compose_many(): the notification templates rendered once per group of
similar events, with messages identical to compose() one at a time."""

from __future__ import annotations

import pytest
from django.template import Engine
from django.test.signals import template_rendered

from notifications.emails import (
    Composer,
    compose,
    prints_time_to_the_second,
    prints_values_plainly,
)
from notifications.events import CATALOG, DATETIME, INTEGER, STRINGS, public_types
from notifications.models import Event, Integration

pytestmark = pytest.mark.django_db
TRICKY = ["plain", "<b>&amp; \"quoted\" 'x'</b>", "\ue0000&\ue001 a slot's look-alike", "  "]


def payloads(event_type: str) -> list[dict]:
    """Payloads that vary in every way a template could show: tricky text, optional fields
    missing, empty or set, numbers and lists."""
    spec = CATALOG[event_type]
    result = []
    for n, text in enumerate(TRICKY * 4):
        payload = {}
        for field in spec.fields:
            if not field.required and n % 3 == 0:
                continue  # missing
            if not field.required and n % 3 == 1:
                payload[field.name] = ""  # empty
                continue
            payload[field.name] = {
                INTEGER: n % 2,
                STRINGS: [text, "two"][: 1 + n % 2],
                DATETIME: "2026-12-01T09:00:00+00:00",
            }.get(field.type, f"{text} {field.name}")
        result.append(payload)
    return result


@pytest.fixture
def integrations() -> list[Integration]:
    return [
        Integration.objects.create(name="A <ops>", recipients=["a@example.com"], all_events=True),
        Integration.objects.create(
            name="B", recipients=["b@example.com", "c@example.com"], subject_prefix="[B&]"
        ),
    ]


def as_sent(message) -> tuple:
    return (
        message.subject,
        message.body,
        list(message.alternatives),
        message.bcc,
        message.extra_headers,
        message.from_email,
    )


@pytest.mark.parametrize("event_type", [e.type for e in public_types()])
def test_every_event_type_composes_the_same_in_bulk(event_type, integrations):
    events = [
        Event.objects.create(type=event_type, payload=p, source="product")
        for p in payloads(event_type)
    ]
    for event in events[1:]:  # one moment for all, as trigger_many stores them: groups form
        event.created_at = events[0].created_at
    pairs = [(event, integration) for event in events for integration in integrations]
    bulk = Composer(event_type).compose_many(pairs)
    rendered = Composer(event_type)  # each message rendered in full, no skeleton
    assert [as_sent(m) for m in bulk] == [as_sent(rendered.render(e, i)) for e, i in pairs]
    again = [compose(e, i) for e, i in pairs]  # the process's composer, its skeletons kept
    assert [as_sent(m) for m in again] == [as_sent(m) for m in bulk]


def test_similar_events_are_rendered_once_per_group(integrations):
    payload = {"email": "x@example.com", "invited_by": "alice", "expires_at": "2026-12-01T09:00"}
    events = [
        Event.objects.create(
            type="user.invited", payload={**payload, "email": f"u{n}@example.com"}, actor="a"
        )
        for n in range(50)
    ]
    for event in events[1:]:  # one moment for all, as trigger_many stores them
        event.created_at = events[0].created_at
    rendered = []

    def count(sender, **kwargs):
        rendered.append(sender.name)

    template_rendered.connect(count)
    try:
        Composer("user.invited").compose_many([(e, integrations[0]) for e in events])
    finally:
        template_rendered.disconnect(count)
    # The first message as usual and the skeleton, text and HTML each (with their bases).
    assert len(rendered) <= 8, rendered


def test_events_of_one_second_share_a_skeleton_across_calls(integrations):
    """API requests come one at a time: the process's composer keeps each second's skeleton."""
    payload = {"api": "orders", "version": "1", "gateway": "gw"}
    first = Event.objects.create(type="api.deployed", payload=payload, source="api")
    events = [first] + [
        Event.objects.create(
            type="api.deployed",
            payload={**payload, "version": str(n)},
            source="api",
            created_at=first.created_at.replace(microsecond=n),
        )
        for n in range(2, 20)
    ]
    rendered = []

    def count(sender, **kwargs):
        rendered.append(sender.name)

    template_rendered.connect(count)
    try:
        messages = [compose(event, integrations[0]) for event in events]
    finally:
        template_rendered.disconnect(count)
    assert len(rendered) <= 8, rendered
    full = Composer("api.deployed")
    assert [as_sent(m) for m in messages] == [
        as_sent(full.render(e, integrations[0])) for e in events
    ]


@pytest.mark.parametrize(
    ("source", "to_the_second"),
    [
        ('{{ event.created_at|date:"Y-m-d H:i:s T" }} {{ event.pk }}', True),
        ("{{ payload.api }}", True),
        ('{{ event.created_at|date:"H:i:s.u" }}', False),
        ('{{ event.created_at|date:"c" }}', False),
        ("{{ event.created_at }}", False),
        ("{{ event.created_at|time }}", False),
        ("{{ event.created_at.microsecond }}", False),
        ("{{ event.created_at|date:fmt }}", False),
    ],
)
def test_which_templates_print_the_time_to_the_second(source, to_the_second):
    assert prints_time_to_the_second(Engine().from_string(source)) is to_the_second


@pytest.mark.parametrize(
    "source, plain",
    [
        ("{{ payload.api }} {% if payload.env %}({{ payload.env }}){% endif %}", True),
        ("{% for label, value in details %}{{ label }}: {{ value }}{% endfor %}", True),
        ('{{ event.created_at|date:"Y-m-d" }} {{ spec.label|upper }}', True),
        ("{% autoescape off %}{{ payload.api }}{% endautoescape %}{# note #}", True),
        ("{{ payload.api|upper }}", False),
        ("{{ payload.api|default:'none' }}", False),
        ("{% if payload.days_left > 1 %}soon{% endif %}", False),
        ("{% if not payload.env %}-{% endif %}", False),
        ("{% for v in details reversed %}{{ v|length }}{% endfor %}", False),
        ("{% with a=payload.api %}{{ a }}{% endwith %}", False),
        ("{{ event.pk|add:1 }}", False),
    ],
)
def test_which_templates_render_once_per_group(source, plain):
    assert prints_values_plainly(Engine().from_string(source)) is plain
