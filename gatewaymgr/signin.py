"""Sign-in throttling with django-axes: a limit per rule, the lockout page, the client address.

Axes records each failed sign-in in the database (so every gunicorn worker and machine shares
the count) and compares one number with one limit. Our rules (settings.SIGN_IN_LOCKOUT_RULES)
each have their own limit: a user name from one address, one address for any user name, one user
name from any address. The decisions are the pure functions below; the handler only reads rows.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence

from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers

# One (failures, time of the last of them) pair per stored attempt row that a rule matches.
Rows = Sequence[tuple[int, datetime.datetime]]

SCOPES = {
    ("ip_address", "username"): "for this user name from your address",
    ("ip_address",): "from your address",
    ("username",): "for this user name",
}


def client_address(remote_addr: str, forwarded_for: str, trusted_proxies: int) -> str:
    """The address of whoever opened the connection, seen past `trusted_proxies` reverse proxies.

    Each proxy appends the address it was connected from to X-Forwarded-For, so the client is
    the n-th entry from the right; anything further left was written by the client and is not
    believed. Without proxies (gunicorn facing the clients, as scripts/run serves) it is the
    connection's peer, REMOTE_ADDR.
    """
    if trusted_proxies <= 0:
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    return hops[-trusted_proxies] if len(hops) >= trusted_proxies else remote_addr


def request_address(request: HttpRequest) -> str:
    """AXES_CLIENT_IP_CALLABLE: client_address() for a request."""
    return client_address(
        request.META.get("REMOTE_ADDR", ""),
        request.META.get("HTTP_X_FORWARDED_FOR", ""),
        settings.TRUSTED_PROXY_COUNT,
    )


def failures_toward_lockout(counts: Sequence[int], limits: Sequence[int], axes_limit: int) -> int:
    """The one number Axes compares with AXES_FAILURE_LIMIT (`axes_limit`).

    It is the rule nearest to its own limit, shifted onto Axes' scale: it reaches `axes_limit`
    exactly when some rule's count reaches that rule's limit.
    """
    headroom = min(limit - count for count, limit in zip(counts, limits, strict=True))
    return max(0, axes_limit - headroom)


def rule_lifts_at(rows: Rows, limit: int, cool_off: datetime.timedelta) -> datetime.datetime | None:
    """When a rule at its limit lets go, or None when it is not at its limit.

    A row counts until `cool_off` after its last failure, so the oldest rows drop out first; the
    lock holds until the row that brings the newest rows' total up to the limit expires.
    """
    total = 0
    for failures, last in sorted(rows, key=lambda row: row[1], reverse=True):
        total += failures
        if total >= limit:
            return last + cool_off
    return None


def lockout_message(scope: str, until: datetime.datetime) -> str:
    """What the sign-in page says, with the time rounded up to the minute it lets go."""
    local = timezone.localtime(until)
    if local.second or local.microsecond:
        local = local.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    scope = f" {scope}" if scope else ""
    return (
        f"Too many failed sign-ins{scope}. Try again after {local:%H:%M} {local.tzname()}, "
        "or ask an administrator to lift the lock."
    )


class LockoutHandler(AxesDatabaseHandler):
    """Axes' database handler with a limit per lockout rule instead of one for all of them."""

    def rule_rows(self, request, credentials=None) -> list[list[tuple[int, datetime.datetime]]]:
        # Axes returns one queryset per AXES_LOCKOUT_PARAMETERS entry, in the rules' order,
        # already limited to the rows within the cool-off period.
        return [
            list(attempts.values_list("failures_since_start", "attempt_time"))
            for attempts in self.get_user_attempts(request, credentials)
        ]

    def get_failures(self, request, credentials=None) -> int:
        counts = [
            sum(failures for failures, _ in rows) for rows in self.rule_rows(request, credentials)
        ]
        limits = [limit for _, limit in settings.SIGN_IN_LOCKOUT_RULES]
        return failures_toward_lockout(counts, limits, settings.AXES_FAILURE_LIMIT)

    def lockout(self, request, credentials=None) -> tuple[str, datetime.datetime] | None:
        """The rule that holds longest, as (scope, when it lets go), or None."""
        cool_off = get_cool_off(request)
        held = []
        for rows, (parameters, limit) in zip(
            self.rule_rows(request, credentials), settings.SIGN_IN_LOCKOUT_RULES, strict=True
        ):
            until = rule_lifts_at(rows, limit, cool_off)
            if until is not None:
                held.append((until, SCOPES[tuple(sorted(parameters))]))
        if not held:
            return None
        until, scope = max(held)
        return scope, until


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials=None
) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the sign-in page again, saying why and until when (HTTP 429)."""
    handler = AxesProxyHandler.get_implementation()
    held = handler.lockout(request, credentials)
    if held is None:  # a lock that lifted between the check and now
        scope, until = "", timezone.now() + datetime.timedelta(minutes=1)
    else:
        scope, until = held
    username = get_client_username(request, credentials) or ""
    context = {
        "form": AuthenticationForm(request, initial={"username": username}),
        "lockout": lockout_message(scope, until),
        "next": request.POST.get("next", ""),
    }
    response = render(request, "registration/login.html", context, status=429)
    retry_after = max(1, math.ceil((until - timezone.now()).total_seconds()))
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response
