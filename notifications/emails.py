"""The notification e-mail: one message per integration per event, text and HTML parts from
per-event templates, every recipient on the envelope only.

Recipients go in Bcc, which Django never writes into the headers, so they do not see each
other's addresses, and the outbox stores one row whose envelope has all of them: the courier
sends it as one SMTP transaction (one MAIL, a RCPT each, one DATA), not one per recipient.
"""

from __future__ import annotations

import copy
import functools
import re
import string
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.template.base import FilterExpression, Node, Template, TextNode, Variable, VariableNode
from django.template.defaultfilters import date as date_filter
from django.template.defaulttags import (
    AutoEscapeControlNode,
    CommentNode,
    ForNode,
    IfNode,
    TemplateLiteral,
)
from django.template.loader import get_template, select_template
from django.template.loader_tags import BlockNode, ExtendsNode
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.html import escape

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
    return composer(event.type).compose(event, integration)


_composers: dict[str, Composer] = {}


def composer(event_type: str) -> Composer:
    """This process's Composer for `event_type`, whose skeletons outlive a request (with
    DEBUG a new one each time: templates edited meanwhile are read again)."""
    if settings.DEBUG:
        return Composer(event_type)
    found = _composers.get(event_type)
    if found is None:
        found = _composers[event_type] = Composer(event_type)
    return found


@receiver(setting_changed)
def _forget_composers(**kwargs: Any) -> None:
    _composers.clear()  # tests change templates, PUBLIC_URL, the time zone...


class Composer:
    """Composes the notification e-mails of events of one type. The templates are looked up
    once, and rendered once per group of events that differ only in their text values, the
    event's id and link (see Skeleton): for the events of trigger_many(), or for one second's
    API requests, not twice per message."""

    MAX_SKELETONS = 256  # groups remembered; then it starts over

    def __init__(self, event_type: str) -> None:
        self.spec = CATALOG[event_type]
        self.text = get_template(_template(event_type, "txt"))
        self.html = get_template(_template(event_type, "html"))
        self.skeletons: dict[tuple, Skeleton | None] = {}  # None: the group renders one by one

    @functools.cached_property
    def plain(self) -> bool:
        """Whether both templates may be rendered once per group (prints_values_plainly)."""
        return all(prints_values_plainly(t.template) for t in (self.text, self.html))

    @functools.cached_property
    def to_the_second(self) -> bool:
        """Whether both templates print the event's time to the second at most: then the
        events of one second may share a skeleton, not only those of one moment."""
        return all(prints_time_to_the_second(t.template) for t in (self.text, self.html))

    def context(
        self, event: Event, integration: Integration, url: str | None = None
    ) -> dict[str, Any]:
        return {
            "event": event,
            "spec": self.spec,
            "payload": event.payload,
            "details": details(self.spec, event.payload),
            "integration": integration,
            "event_url": event_url(event.pk) if url is None else url,
            "integration_url": settings.PUBLIC_URL
            + reverse("integrations:edit", args=[integration.pk]),
        }

    def render(self, event: Event, integration: Integration) -> EmailMultiAlternatives:
        context = self.context(event, integration)
        return self.message(
            event, integration, self.text.render(context), self.html.render(context)
        )

    def compose(self, event: Event, integration: Integration) -> EmailMultiAlternatives:
        if not self.plain:
            return self.render(event, integration)
        key = group(event, integration, to_the_second=self.to_the_second)
        if key not in self.skeletons:
            message = self.render(event, integration)
            skeleton: Skeleton | None = Skeleton(self, event, integration)
            # Proof by example on top of the template checks: the group's first message must
            # come out of the skeleton exactly as rendered, or the group renders one by one.
            if skeleton.fill(event) != (message.body, message.alternatives[0].content):
                skeleton = None
            if len(self.skeletons) >= self.MAX_SKELETONS:
                self.skeletons.clear()
            self.skeletons[key] = skeleton
            return message
        skeleton = self.skeletons[key]
        if skeleton is None:
            return self.render(event, integration)
        return self.message(event, integration, *skeleton.fill(event))

    def compose_many(self, pairs: list[tuple[Event, Integration]]) -> list[EmailMultiAlternatives]:
        """compose() for each (event, integration), in order."""
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


def event_url(pk: Any) -> str:
    return settings.PUBLIC_URL + reverse("events:detail", args=[pk])


# --- Rendering once per group of events ---
#
# Events of one type whose payloads have the same fields, the same non-text values and text
# values that are all non-empty, sent to the same integration at the same moment, differ in
# their messages only where a text value, the event's id or its link is printed, as long as
# the templates print those plainly (prints_values_plainly). So their messages are rendered
# once with a numbered slot in place of each such value, and filled in per event.

# A slot: private-use characters that no escaping touches around its number, and an "&" that
# shows whether the place it was printed at escapes HTML ("&amp;") or not ("&").
_SLOT = re.compile("\ue000(\\d+)(&amp;|&)\ue001")
_CONSTANT_ROOTS = {"spec", "integration", "integration_url"}  # the same within a group
_CONSTANT_EVENT_FIELDS = {"created_at", "type", "source", "actor"}  # part of group()
_PLAIN_NODES = (
    TextNode,
    VariableNode,
    IfNode,
    ForNode,
    BlockNode,
    ExtendsNode,
    AutoEscapeControlNode,
    CommentNode,
)


def _slot(number: int) -> str:
    return f"\ue000{number}&\ue001"


def group(event: Event, integration: Integration, *, to_the_second: bool = False) -> tuple:
    """What must be equal for two events' messages to share a skeleton."""
    fields = tuple(
        (key, "text" if isinstance(value, str) and value else repr(value))
        for key, value in event.payload.items()
    )
    moment = event.created_at.replace(microsecond=0) if to_the_second else event.created_at
    sent_as = tuple(repr(getattr(integration, f.attname)) for f in Integration._meta.fields)
    where = (timezone.get_current_timezone_name(), translation.get_language())
    return (sent_as, moment, event.type, event.source, event.actor, where, fields)


class Skeleton:
    """The text and HTML of one group's messages, with slots for what differs per event."""

    def __init__(self, composer: Composer, event: Event, integration: Integration) -> None:
        self.keys = [k for k, v in event.payload.items() if isinstance(v, str) and v]
        stand_in = copy.copy(event)
        stand_in.pk = _slot(0)
        stand_in.payload = {
            **event.payload,
            **{key: _slot(n) for n, key in enumerate(self.keys, start=2)},
        }
        context = composer.context(stand_in, integration, url=_slot(1))
        self.text = composer.text.render(context)
        self.html = composer.html.render(context)

    def fill(self, event: Event) -> tuple[str, str]:
        values = [str(event.pk), event_url(event.pk), *(event.payload[k] for k in self.keys)]

        def value(match: re.Match[str]) -> str:
            text = values[int(match.group(1))]
            return escape(text) if match.group(2) == "&amp;" else text

        return _SLOT.sub(value, self.text), _SLOT.sub(value, self.html)


def prints_values_plainly(template: Template) -> bool:
    """Whether `template` (and what it extends) uses only text, blocks, autoescape, comments,
    {{ value }}, {% if value %} and {% for ... in value %}, with filters only on values that
    are the same for a whole group: then its output is a skeleton with the group's values
    dropped in. Anything else (a filter or a comparison on a payload value, another tag)
    renders one message at a time."""
    for node in _nodes(template):
        if not isinstance(node, _PLAIN_NODES):
            return False
        if isinstance(node, IfNode) and not all(
            condition is None or isinstance(condition, TemplateLiteral)
            for condition, _ in node.conditions_nodelists
        ):
            return False
        if isinstance(node, ExtendsNode) and _parent(node) is None:
            return False
        if not all(_plain_value(e) for e in _expressions(node)):
            return False
    return True


def prints_time_to_the_second(template: Template) -> bool:
    """Whether `template` prints the event's time only through the date filter with a format
    that stops at seconds (no "u" microseconds, no "c" ISO 8601 with them)."""
    for node in _nodes(template):
        for expression in _expressions(node):
            var = expression.var
            if not isinstance(var, Variable) or (var.lookups or ())[:2] != ("event", "created_at"):
                continue
            if len(var.lookups) > 2 or len(expression.filters) != 1:
                return False
            [(function, arguments)] = expression.filters
            if function is not date_filter or len(arguments) != 1:
                return False
            [(is_variable, format_)] = arguments
            if is_variable or not isinstance(format_, str) or set(format_) & {"u", "c", "\\"}:
                return False
    return True


def _nodes(template: Template) -> Iterator[Node]:
    """Every node of `template` and of the templates it extends."""
    pending = list(template.nodelist)
    while pending:
        node = pending.pop()
        yield node
        if isinstance(node, ExtendsNode) and (parent := _parent(node)) is not None:
            pending += template.engine.get_template(parent).nodelist
        for attribute in node.child_nodelists:
            pending += getattr(node, attribute, None) or []


def _parent(node: ExtendsNode) -> str | None:
    """The name of the template `node` extends, when it is a plain string."""
    name = node.parent_name
    return name.var if not name.filters and isinstance(name.var, str) else None


def _expressions(node: Node) -> list[FilterExpression]:
    if isinstance(node, VariableNode):
        return [node.filter_expression]
    if isinstance(node, ForNode):
        return [node.sequence]
    if isinstance(node, IfNode):
        return [c.value for c, _ in node.conditions_nodelists if isinstance(c, TemplateLiteral)]
    return []


def _plain_value(expression: FilterExpression) -> bool:
    """A value printed or tested as it is, or a value that is the same for the whole group."""
    if not expression.filters:
        return True
    var = expression.var
    if not isinstance(var, Variable) or var.literal is not None:
        return True  # a literal
    lookups = var.lookups or ()
    if lookups[:1] and lookups[0] in _CONSTANT_ROOTS:
        return True
    return lookups[:1] == ("event",) and lookups[1:2] and lookups[1] in _CONSTANT_EVENT_FIELDS


def _template(event_type: str, extension: str) -> str:
    """The event's own template, or the generic one for a type that has none yet."""
    return select_template(
        [
            f"notifications/email/{event_type}.{extension}",
            f"notifications/email/generic.{extension}",
        ]
    ).template.name
