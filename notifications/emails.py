"""The notification e-mail: one message per integration per event, text and HTML parts from
per-event templates, every recipient on the envelope only.

Recipients go in Bcc, which Django never writes into the headers, so they do not see each
other's addresses, and the outbox stores one row whose envelope has all of them: the courier
sends it as one SMTP transaction (one MAIL, a RCPT each, one DATA), not one per recipient.
"""

from __future__ import annotations

import re
import string
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import get_template, select_template
from django.urls import reverse

from .events import CATALOG, EventType
from .models import Event, Integration

MAX_SUBJECT = 200  # characters; long subjects get folded or cut by mail clients anyway
# Every control character (C0, DEL, C1) and the Unicode line and paragraph separators: any of
# them in a header could end it early or start a new one.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
UNDISCLOSED = "undisclosed-recipients:;"  # RFC 5322's empty group: a To that names nobody


def header_safe(text: str) -> str:
    """`text` on one line: control characters and line breaks become a space, runs of spaces
    one space."""
    return " ".join(UNSAFE.sub(" ", text).split())


def subject_line(prefix: str, subject: str) -> str:
    """The Subject header: the integration's prefix, then the event's subject, header-safe
    and at most MAX_SUBJECT characters."""
    text = header_safe(f"{header_safe(prefix)} {header_safe(subject)}")
    if len(text) > MAX_SUBJECT:
        text = text[: MAX_SUBJECT - 1].rstrip() + "…"
    return text


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


def event_subject(spec: EventType, payload: dict[str, Any]) -> str:
    """The event's own subject, its template filled from the payload. Only the catalog's
    template is formatted, so a payload value can never reach attributes or indexes."""
    values = _Blank({key: _text(value) for key, value in payload.items() if value is not None})
    return string.Formatter().vformat(spec.subject, (), values)


def details(spec: EventType, payload: dict[str, Any]) -> list[tuple[str, str]]:
    """The payload in the catalog's field order, labelled with the fields' descriptions."""
    return [
        (field.description or field.name, _text(payload[field.name]))
        for field in spec.fields
        if payload.get(field.name) not in (None, "", [])
    ]


def _text(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def compose(event: Event, integration: Integration) -> EmailMultiAlternatives:
    return Composer(event.type).compose(event, integration)


class Composer:
    """Composes the notification e-mails of events of one type: the templates are looked up
    once, not per message."""

    def __init__(self, event_type: str) -> None:
        self.spec = CATALOG[event_type]
        self.text = get_template(_template(event_type, "txt"))
        self.html = get_template(_template(event_type, "html"))

    def context(self, event: Event, integration: Integration) -> dict[str, Any]:
        return {
            "event": event,
            "spec": self.spec,
            "payload": event.payload,
            "details": details(self.spec, event.payload),
            "integration": integration,
            "event_url": settings.PUBLIC_URL + reverse("events:detail", args=[event.pk]),
            "integration_url": settings.PUBLIC_URL
            + reverse("integrations:edit", args=[integration.pk]),
        }

    def compose(self, event: Event, integration: Integration) -> EmailMultiAlternatives:
        context = self.context(event, integration)
        return self.message(
            event, integration, self.text.render(context), self.html.render(context)
        )

    def compose_many(self, pairs: list[tuple[Event, Integration]]) -> list[EmailMultiAlternatives]:
        return [self.compose(event, integration) for event, integration in pairs]

    def message(
        self, event: Event, integration: Integration, text: str, html: str
    ) -> EmailMultiAlternatives:
        message = EmailMultiAlternatives(
            subject=subject_line(
                integration.subject_prefix, event_subject(self.spec, event.payload)
            ),
            body=text,
            from_email="",  # the outbox puts the stored sender here
            bcc=list(integration.recipients),
            headers={"To": UNDISCLOSED, "Auto-Submitted": "auto-generated"},
        )
        message.attach_alternative(html, "text/html")
        return message


def _template(event_type: str, extension: str) -> str:
    """The event's own template, or the generic one for a type that has none yet."""
    return select_template(
        [
            f"notifications/email/{event_type}.{extension}",
            f"notifications/email/generic.{extension}",
        ]
    ).template.name
