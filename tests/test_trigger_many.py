"""triggering.trigger_many(): many events of one type at once, set-based, with what trigger()
per payload gives (the bulk invitations raise user.invited this way)."""

from __future__ import annotations

import email
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from notifications.delivery import Courier
from notifications.emails import Composer
from notifications.events import InvalidEvent
from notifications.models import Category, Dispatch, Event, Integration, OutboundEmail
from notifications.triggering import trigger, trigger_many
from tests.outbox import point_settings_at
from tests.smtpservers import require_test_host, smtp_server

pytestmark = pytest.mark.django_db
INVITED = "user.invited"


def invited(n: int) -> dict[str, str]:
    return {
        "email": f"user{n}@example.com",
        "invited_by": "alice <admin> & co",  # escaped in HTML, as is in text
        "expires_at": "2026-12-01T09:00:00+00:00",
    }


@pytest.fixture
def integrations() -> list[Integration]:
    """Two that want user.invited, and three that must get nothing."""
    wanted = [
        Integration.objects.create(name="All", recipients=["all@example.com"], all_events=True),
        Integration.objects.create(
            name="Joins",
            recipients=["a@example.com", "b@example.com"],
            events=[INVITED],
            subject_prefix="[GM]",
        ),
    ]
    Integration.objects.create(
        name="Off", recipients=["off@example.com"], all_events=True, enabled=False
    )
    Integration.objects.create(name="Other", recipients=["x@example.com"], events=["api.retired"])
    Integration.objects.create(name="Nobody", recipients=[], all_events=True)
    return wanted


def parts(row: OutboundEmail) -> tuple[str, str, str]:
    """Subject, text part and HTML part of a stored message."""
    message = email.message_from_bytes(row.message_bytes())
    text, html = (
        p.get_payload(decode=True).decode().replace("\r\n", "\n") for p in message.get_payload()
    )
    return message["Subject"], text, html


def anonymous(text: str, event: Event) -> str:
    """`text` without what differs between two events of the same payload: id and time."""
    text = re.sub(rf"\b(events/|[Ee]vent ){event.pk}\b", r"\1N", text)
    return text.replace(f"{event.created_at:%Y-%m-%d %H:%M:%S}", "TIME")


def outcome(event: Event) -> list[tuple]:
    """What an event left behind, apart from its id and time: per dispatch, the message."""
    rows = []
    for dispatch in Dispatch.objects.filter(event=event).select_related("email"):
        row = dispatch.email
        subject, text, html = parts(row)
        rows.append(
            (
                dispatch.integration_id,
                dispatch.integration_name,
                row.category,
                row.cause == event,
                row.subject,
                subject,
                row.envelope_from,
                row.recipients,
                row.status,
                anonymous(text, event),
                anonymous(html, event),
            )
        )
    return rows


def test_trigger_many_stores_what_trigger_does_per_payload(integrations):
    point_settings_at("smtp.gatewaymgr.test", 2525)
    one_by_one = [trigger(INVITED, invited(n), actor="bulk") for n in range(3)]
    many = trigger_many(INVITED, [invited(n) for n in range(3)], actor="bulk")
    assert len(many) == 3 and all(event.pk for event in many)
    assert Event.objects.count() == 6 and OutboundEmail.objects.count() == 12
    for single, bulk in zip(one_by_one, many, strict=True):
        stored = Event.objects.get(pk=bulk.pk)
        assert (stored.type, stored.payload, stored.source, stored.actor) == (
            single.type,
            single.payload,
            single.source,
            single.actor,
        )
        assert outcome(bulk) == outcome(single)
        assert [d.integration for d in bulk.dispatches.all()] == integrations
    # And each body is exactly what the templates render for its own event.
    for dispatch in Dispatch.objects.filter(event__in=many).select_related("email", "integration"):
        expected = Composer(INVITED).render(dispatch.event, dispatch.integration)
        subject, text, html = parts(dispatch.email)
        assert (subject, text, html) == (
            expected.subject,
            expected.body,
            expected.alternatives[0].content,
        )
        assert "alice &lt;admin&gt; &amp; co invited" in html
        assert "alice <admin> & co invited" in text


def test_the_statements_do_not_grow_with_the_payloads(integrations):
    def statements(count: int, start: int) -> int:
        with CaptureQueriesContext(connection) as queries:
            trigger_many(INVITED, [invited(start + n) for n in range(count)])
        return len(queries)

    statements(1, 0)  # the first also creates the settings row and caches the content type
    few, many = statements(2, 10), statements(40, 100)
    # 80 messages may take a second INSERT on SQLite, whose bulk_create batches by its limit
    # of 999 variables; per payload, trigger() would take about ten statements each.
    assert many <= few + 2, (few, many)
    assert OutboundEmail.objects.count() == 2 * 43 and Dispatch.objects.count() == 2 * 43


def test_an_invalid_payload_names_its_position_and_nothing_is_stored(integrations):
    payloads = [invited(0), {"email": "b@example.com", "invited_by": "x", "expires_at": "soon"}]
    with pytest.raises(InvalidEvent) as raised:
        trigger_many(INVITED, payloads)
    assert list(raised.value.errors) == ["payloads[1].expires_at"]
    assert not Event.objects.exists() and not OutboundEmail.objects.exists()


def test_the_api_and_command_may_not_raise_product_events_in_bulk_either():
    with pytest.raises(InvalidEvent) as raised:
        trigger_many(INVITED, [invited(0)], source="api")
    assert "raised by Gateway Manager itself" in raised.value.errors["payloads[0].type"][0]
    with pytest.raises(ValueError):
        trigger_many(INVITED, [invited(0)], source="test")


def test_no_payloads_and_no_integrations_are_fine():
    assert trigger_many(INVITED, []) == []
    events = trigger_many(INVITED, [invited(0), invited(1)])
    assert Event.objects.count() == 2 and len(events) == 2
    assert not OutboundEmail.objects.exists()


def test_the_messages_arrive(integrations):
    require_test_host()
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        trigger_many(INVITED, [invited(n) for n in range(3)], actor="alice")
        assert Courier().drain() == 6
        assert sorted(tuple(m.rcpt_tos) for m in server.messages) == sorted(
            [("all@example.com",)] * 3 + [("a@example.com", "b@example.com")] * 3
        )
    assert set(OutboundEmail.objects.values_list("category", flat=True)) == {Category.NOTIFICATION}
