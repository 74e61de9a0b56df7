"""POST /api/v1/events: trigger an event over HTTP with a bearer token.

    curl -X POST https://console.example.com/api/v1/events \
        -H "Authorization: Bearer gm_..." -H "Content-Type: application/json" \
        -d '{"type": "api.deployed", "payload": {"api": "orders", ...}}'

Every answer is JSON. 202 {"id", "type", "integrations", "messages"} once the event is
recorded and its messages are in the outbox; 400 {"errors": {field: [messages]}} for a body
that is too large, not JSON, of an unknown type or with a payload that does not fit; 401 for
a missing, unknown or revoked token; 405 for any method but POST.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import tokens
from .events import InvalidEvent
from .models import EventSource
from .triggering import trigger

MAX_BODY = 64 * 1024  # bytes; an event is a short notice, and this keeps memory per request small


def error(status: int, errors: dict[str, list[str]], **headers: str) -> JsonResponse:
    response = JsonResponse({"errors": errors}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def read_body(request: HttpRequest) -> tuple[Any, dict[str, list[str]]]:
    """The JSON document in the body, or the errors why there is none. Reads at most one byte
    past the limit, whatever Content-Length claims."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    too_large = {"body": [f"The request body is larger than {MAX_BODY:,} bytes."]}
    if length > MAX_BODY:
        return None, too_large
    raw = request.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        return None, too_large
    try:
        return json.loads(raw), {}
    except (UnicodeDecodeError, ValueError) as problem:
        return None, {"body": [f"The body is not valid JSON: {problem}."]}


@csrf_exempt  # authenticated by a bearer token, not a cookie: nothing to forge
def events_endpoint(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return error(405, {"method": ["Use POST."]}, Allow="POST")
    secret = tokens.bearer(request.headers.get("Authorization", ""))
    token = tokens.authenticate(secret)
    if token is None:
        if secret is None:
            why = "Send the header Authorization: Bearer <token>."
        else:
            why = "The token is unknown or revoked."
        return error(401, {"token": [why]}, WWW_Authenticate='Bearer realm="events"')
    body, errors = read_body(request)
    if errors:
        return error(400, errors)
    if not isinstance(body, dict):
        return error(400, {"body": ['Expected a JSON object: {"type": ..., "payload": {...}}.']})
    unknown = sorted(set(body) - {"type", "payload"})
    if unknown:
        return error(400, {key: ["Unknown key; use type and payload."] for key in unknown})
    try:
        event = trigger(
            body.get("type"), body.get("payload", {}), actor=str(token), source=EventSource.API
        )
    except InvalidEvent as invalid:
        return error(400, invalid.errors)
    dispatches = event.dispatches.count()
    return JsonResponse(
        {"id": event.pk, "type": event.type, "integrations": dispatches, "messages": dispatches},
        status=202,
    )
