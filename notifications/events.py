"""The event catalog: every event type the product knows, in one place, and the one payload
validation that the Python API, the HTTP API and the command share.

Pure data and pure functions: nothing here touches the database, so the catalog can be read
at import time and the validation is tested as a table.
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Field types, kept small: what a JSON body can carry without a schema language.
STRING = "string"
INTEGER = "integer"
STRINGS = "list of strings"
DATETIME = "ISO 8601 date and time"

MAX_STRING = 1000  # characters in one string value: an event is a notice, not a document
MAX_INTEGER = 1_000_000_000  # an integer value's magnitude: counts and days, not big numbers
MAX_ITEMS = 100  # items in one list value
# Nesting of a JSON body or --data: {"payload": {"field": [...]}} needs 3; deeper is refused
# before parsing (Python's json recurses).
MAX_JSON_DEPTH = 10


@dataclass(frozen=True)
class Field:
    name: str
    type: str = STRING
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class EventType:
    type: str
    label: str
    description: str
    fields: tuple[Field, ...]
    subject: str  # str.format() template over the payload; missing optional fields are blank
    internal: bool = False  # sent by the product itself only (the test notification)
    # Raised only by the product itself (its own audit notices): integrations may subscribe,
    # but the HTTP API and the command refuse them, so no token can forge one.
    product_only: bool = False

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]


def _f(name: str, type: str = STRING, required: bool = True, description: str = "") -> Field:
    return Field(name, type, required, description)


CATALOG: dict[str, EventType] = {
    e.type: e
    for e in [
        EventType(
            "api.deployed",
            "API deployed",
            "A version of an API was deployed to a gateway.",
            (
                _f("api", description="API name"),
                _f("version", description="Deployed version"),
                _f("gateway", description="Gateway it was deployed to"),
                _f("environment", required=False, description="e.g. production"),
                _f("deployed_by", required=False, description="Who deployed it"),
            ),
            "API {api} {version} deployed to {gateway}",
        ),
        EventType(
            "api.deployment_failed",
            "API deployment failed",
            "Deploying a version of an API to a gateway failed.",
            (
                _f("api", description="API name"),
                _f("version", description="Version that failed to deploy"),
                _f("gateway", description="Gateway"),
                _f("error", description="What went wrong"),
                _f("environment", required=False, description="e.g. production"),
            ),
            "Deployment of API {api} {version} to {gateway} failed",
        ),
        EventType(
            "api.retired",
            "API retired",
            "An API (or one version of it) was retired and no longer takes calls.",
            (
                _f("api", description="API name"),
                _f("version", required=False, description="Retired version; blank for all"),
                _f("gateway", required=False, description="Gateway; blank for all"),
                _f("retired_by", required=False, description="Who retired it"),
            ),
            "API {api} {version} retired",
        ),
        EventType(
            "subscription.requested",
            "Subscription requested",
            "An application asked to subscribe to an API.",
            (
                _f("api", description="API name"),
                _f("application", description="Subscribing application"),
                _f("requested_by", description="Who asked"),
                _f("plan", required=False, description="Usage plan"),
            ),
            "{application} requests a subscription to {api}",
        ),
        EventType(
            "subscription.approved",
            "Subscription approved",
            "A subscription request was approved.",
            (
                _f("api", description="API name"),
                _f("application", description="Subscribing application"),
                _f("plan", required=False, description="Usage plan"),
                _f("approved_by", required=False, description="Who approved it"),
            ),
            "Subscription of {application} to {api} approved",
        ),
        EventType(
            "subscription.rejected",
            "Subscription rejected",
            "A subscription request was rejected.",
            (
                _f("api", description="API name"),
                _f("application", description="Subscribing application"),
                _f("reason", required=False, description="Why"),
                _f("rejected_by", required=False, description="Who rejected it"),
            ),
            "Subscription of {application} to {api} rejected",
        ),
        EventType(
            "gateway.unreachable",
            "Gateway unreachable",
            "The manager could not reach a gateway.",
            (
                _f("gateway", description="Gateway name"),
                _f("since", DATETIME, description="When it was last reachable"),
                _f("address", required=False, description="Address tried"),
                _f("error", required=False, description="What the connection attempt said"),
            ),
            "Gateway {gateway} is unreachable",
        ),
        EventType(
            "certificate.expiring",
            "Certificate expiring",
            "A gateway's TLS certificate expires soon.",
            (
                _f("subject", description="Certificate subject"),
                _f("gateway", description="Gateway that presents it"),
                _f("expires_at", DATETIME, description="When it expires"),
                _f("days_left", INTEGER, description="Days until it expires"),
            ),
            "Certificate {subject} on {gateway} expires in {days_left} days",
        ),
        EventType(
            "user.invited",
            "User invited",
            "Someone was invited to join Gateway Manager.",
            (
                _f("email", description="Address the invitation went to"),
                _f("invited_by", description="Who invited them"),
                _f("expires_at", DATETIME, description="When the invitation expires"),
            ),
            "{invited_by} invited {email}",
            product_only=True,
        ),
        EventType(
            "user.joined",
            "User joined",
            "An invited user accepted and now has an account.",
            (
                _f("username", description="The new account's user name"),
                _f("email", description="Their e-mail address"),
                _f("name", required=False, description="Their full name"),
                _f("invited_by", required=False, description="Who invited them"),
            ),
            "{username} joined Gateway Manager",
            product_only=True,
        ),
        EventType(
            "smtp.settings_changed",
            "SMTP settings changed",
            "The SMTP settings were saved with changes. Lists the fields, never a password.",
            (
                _f("fields", STRINGS, description="Labels of the fields that changed"),
                _f("changed_by", required=False, description="Who saved them"),
            ),
            "SMTP settings changed",
            product_only=True,
        ),
        EventType(
            "smtp.credential_expiring",
            "SMTP sign-in credential expiring",
            "A client secret or certificate the product signs in to the mail server with "
            "expires soon (30, 7 and 1 days before). Mail stops when it does.",
            (
                _f(
                    "credential", description="Which credential, e.g. 'Microsoft 365 client secret'"
                ),
                _f("expires_at", DATETIME, description="When it expires"),
                _f("days_left", INTEGER, description="Whole days until then"),
            ),
            "SMTP sign-in: the {credential} expires in {days_left} day(s)",
            product_only=True,
        ),
        EventType(
            "integration.test",
            "Test notification",
            "Sent from an integration's page to check that its recipients get mail.",
            (
                _f("integration", description="The integration tested"),
                _f("requested_by", required=False, description="Who asked for the test"),
            ),
            "Test notification from {integration}",
            internal=True,
        ),
    ]
}
TEST_EVENT = "integration.test"


def labels(event_types: list[str]) -> list[str]:
    """The labels of `event_types`, in catalog order; a type the catalog no longer has by
    its name."""
    known = [e.label for e in CATALOG.values() if e.type in event_types]
    return known + [t for t in event_types if t not in CATALOG]


def public_types() -> list[EventType]:
    """The event types integrations subscribe to and the API and command accept."""
    return [e for e in CATALOG.values() if not e.internal]


class InvalidEvent(ValueError):
    """An unknown event type or a payload that does not fit it. `errors` maps a field name
    ("type", "payload" or a payload field) to its messages."""

    def __init__(self, errors: Mapping[str, list[str]]):
        self.errors = {key: list(messages) for key, messages in errors.items()}
        super().__init__(
            "; ".join(f"{key}: {' '.join(messages)}" for key, messages in self.errors.items())
        )


def nearest(word: str, choices: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


def type_errors(
    event_type: Any, *, allow_internal: bool = False, from_outside: bool = False
) -> dict[str, list[str]]:
    """Why `event_type` is not one that may be triggered, or {} when it is. `from_outside`:
    the HTTP API or the command asks, which may not raise the product's own events."""
    known = [
        e.type
        for e in CATALOG.values()
        if (allow_internal or not e.internal) and not (from_outside and e.product_only)
    ]
    if not isinstance(event_type, str) or not event_type:
        return {"type": [f"An event type is required, one of: {', '.join(known)}."]}
    if event_type in known:
        return {}
    if from_outside and event_type in CATALOG and CATALOG[event_type].product_only:
        return {
            "type": [
                f"{event_type} is raised by Gateway Manager itself when it happens; it cannot "
                "be triggered through the API or the command. Integrations may subscribe to it."
            ]
        }
    guess = nearest(event_type, known)
    hint = f" Did you mean {guess!r}?" if guess else f" Valid types: {', '.join(known)}."
    return {"type": [f"Unknown event type {event_type!r}.{hint}"]}


def value_error(field: Field, value: Any) -> str | None:
    """Why `value` does not fit `field`, or None when it does."""
    if field.type == STRING:
        if not isinstance(value, str):
            return f"Expected a string, got {json_type(value)}."
        if len(value) > MAX_STRING:
            return f"At most {MAX_STRING} characters."
    elif field.type == INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"Expected an integer, got {json_type(value)}."
        if abs(value) > MAX_INTEGER:
            return f"Expected an integer between -{MAX_INTEGER:,} and {MAX_INTEGER:,}."
    elif field.type == STRINGS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"Expected a list of strings, got {json_type(value)}."
        if len(value) > MAX_ITEMS:
            return f"At most {MAX_ITEMS} items."
        if any(len(v) > MAX_STRING for v in value):
            return f"Each item at most {MAX_STRING} characters."
    elif field.type == DATETIME:
        if not isinstance(value, str):
            return f"Expected an ISO 8601 date and time string, got {json_type(value)}."
        try:
            datetime.datetime.fromisoformat(value)
        except ValueError:
            return f"Not an ISO 8601 date and time: {value[:40]!r} (e.g. 2026-12-01T09:00:00Z)."
    return None


def payload_errors(event_type: str, payload: Any) -> dict[str, list[str]]:
    """Field errors of `payload` for a known `event_type`; {} when it is valid.

    Strict, like the SMTP options: an unknown field is an error that names the nearest
    valid one, so a typo never silently drops a value.
    """
    spec = CATALOG[event_type]
    if not isinstance(payload, dict):
        return {"payload": [f"Expected a JSON object, got {json_type(payload)}."]}
    errors: dict[str, list[str]] = {}
    for field in spec.fields:
        value = payload.get(field.name)
        if value is None or value == "" or value == []:
            if field.required:
                errors[field.name] = ["This field is required."]
            continue
        problem = value_error(field, value)
        if problem:
            errors[field.name] = [problem]
    for name in payload:
        if name not in spec.field_names:
            guess = nearest(str(name), spec.field_names)
            hint = f" Did you mean {guess!r}?" if guess else ""
            errors[str(name)] = [
                f"Unknown field for {event_type}.{hint} Fields: {', '.join(spec.field_names)}."
            ]
    return errors


def validate(
    event_type: Any, payload: Any, *, allow_internal: bool = False, from_outside: bool = False
) -> None:
    """Raise InvalidEvent unless `event_type` is known (and, `from_outside`, not one only the
    product raises) and `payload` fits it."""
    errors = type_errors(event_type, allow_internal=allow_internal, from_outside=from_outside)
    if not errors:
        errors = payload_errors(event_type, payload)
    if errors:
        raise InvalidEvent(errors)


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
