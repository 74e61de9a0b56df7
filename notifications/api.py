"""POST /api/v1/events: trigger an event over HTTP with a bearer token.

    curl -X POST https://console.example.com/api/v1/events \
        -H "Authorization: Bearer gm_..." -H "Content-Type: application/json" \
        -d '{"type": "api.deployed", "payload": {"api": "orders", ...}}'

Every answer is JSON. 202 {"id", "type", "integrations", "messages"} once the event is
recorded and its messages are in the outbox; 400 {"errors": {field: [messages]}} for a body
that is too large, not JSON, nested too deeply, of an unknown type, of a type only the product
raises, or with a payload that does not fit; 401 for a missing, unknown or revoked token; 405
for any method but POST; 429 with Retry-After past the rate limit (see ratelimit.py).
"""

from __future__ import annotations

import json
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from gatewaymgr.untrusted import UnsafeJson, load_json

from . import ratelimit, sqlite_writers, tokens, triggering
from .events import MAX_JSON_DEPTH, InvalidEvent, validate
from .models import EventSource

MAX_BODY = 64 * 1024  # bytes; an event is a short notice, and this keeps memory per request small


def error(status: int, errors: dict[str, list[str]], **headers: str) -> JsonResponse:
    response = JsonResponse({"errors": errors}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def too_many(why: str, wait: int) -> JsonResponse:
    return error(429, {"token": [f"{why} Try again in {wait} seconds."]}, Retry_After=str(wait))


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
        return load_json(raw.decode("utf-8"), max_depth=MAX_JSON_DEPTH), {}
    except UnicodeDecodeError:
        return None, {"body": ["The body is not valid JSON: it is not UTF-8 text."]}
    except UnsafeJson as problem:
        return None, {"body": [f"The body {problem}."]}
    except json.JSONDecodeError as problem:
        return None, {"body": [f"The body is not valid JSON: {problem}."]}


def body_errors(body: Any) -> dict[str, list[str]]:
    """Why the JSON `body` is no event that may be triggered through the API, or {}."""
    if not isinstance(body, dict):
        return {"body": ['Expected a JSON object: {"type": ..., "payload": {...}}.']}
    unknown = sorted(set(body) - {"type", "payload"})
    if unknown:
        return {key: ["Unknown key; use type and payload."] for key in unknown}
    try:
        validate(body.get("type"), body.get("payload", {}), from_outside=True)
    except InvalidEvent as invalid:
        return invalid.errors
    return {}


@csrf_exempt  # authenticated by a bearer token, not a cookie: nothing to forge
def events_endpoint(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return error(405, {"method": ["Use POST."]}, Allow="POST")
    rate = ratelimit.configured_rate()
    # Requests without a valid token are counted per client address, and once that budget is
    # used even a valid token from there waits: otherwise the answer would tell a guesser
    # which guess was right.
    address = "address:" + request.META.get("REMOTE_ADDR", "")
    wait = ratelimit.blocked(address, rate)
    if wait:
        return too_many(
            f"Too many requests without a valid token from this address ({rate}).", wait
        )
    secret = tokens.bearer(request.headers.get("Authorization", ""))
    token = tokens.authenticate(secret)
    if token is None:
        ratelimit.hit(address, rate)
        if secret is None:
            why = "Send the header Authorization: Bearer <token>."
        else:
            why = "The token is unknown or revoked."
        return error(401, {"token": [why]}, WWW_Authenticate='Bearer realm="events"')
    bucket = "token:" + token.hash
    over_budget = f"Too many requests with this token: it may make {rate}."
    body, errors = read_body(request)
    if not errors:
        errors = body_errors(body)
    if errors:
        wait = ratelimit.hit(bucket, rate)  # a bad request counts too
        return too_many(over_budget, wait) if wait else error(400, errors)
    wait = ratelimit.blocked(bucket, rate)  # a spent budget costs a read, and nothing else
    if wait:
        return too_many(over_budget, wait)
    integrations = triggering.wanting(body["type"])  # read before the write lock is taken
    # Counting the request and recording the event is one transaction: one write, not two.
    with sqlite_writers.queue(), transaction.atomic():
        event = triggering.record(
            body["type"], body.get("payload", {}), str(token), EventSource.API, integrations
        )
        # Counted last: on PostgreSQL the count's row is locked from here until the commit,
        # and the token's other requests wait for it.
        wait = ratelimit.hit(bucket, rate)
        if wait:  # the budget ran out meanwhile: nothing of this request is kept
            transaction.set_rollback(True)
            return too_many(over_budget, wait)
    dispatches = event.queued
    return JsonResponse(
        {"id": event.pk, "type": event.type, "integrations": dispatches, "messages": dispatches},
        status=202,
    )
