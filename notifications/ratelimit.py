"""The HTTP API's rate limit: requests counted in fixed windows in Django's cache.

Two budgets of API_RATE_LIMIT each (default "120/minute"): one per token for its requests,
and one per client address for requests without a valid token, so guessing tokens is
throttled too. The cache is whatever CACHES configures; one shared by all processes (the
database, Redis, memcached) makes the limit hold across all web workers.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

DEFAULT = "120/minute"
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(second|minute|hour|day)s?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Rate:
    count: int
    unit: str

    @property
    def seconds(self) -> int:
        return UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.count} request{'s' if self.count != 1 else ''} per {self.unit}"


def parse_rate(text: str) -> Rate:
    """`"120/minute"` -> Rate(120, "minute"); second, minute, hour or day."""
    match = _RATE.fullmatch(text)
    if not match or int(match.group(1)) < 1:
        raise ImproperlyConfigured(
            f"API_RATE_LIMIT must look like 120/minute (a count of 1 or more per second, "
            f"minute, hour or day), not {text!r}."
        )
    return Rate(int(match.group(1)), match.group(2).lower())


def configured_rate() -> Rate:
    return parse_rate(getattr(settings, "API_RATE_LIMIT", DEFAULT))


def window(now: float, rate: Rate) -> tuple[int, int]:
    """The number of the window `now` falls in, and the whole seconds until it ends (>= 1)."""
    index = int(now // rate.seconds)
    return index, max(1, math.ceil((index + 1) * rate.seconds - now))


def _key(bucket: str, rate: Rate, index: int) -> str:
    return f"api-rate:{bucket}:{rate.seconds}:{index}"


def blocked(bucket: str, rate: Rate, *, now: float | None = None) -> int | None:
    """Seconds to wait when `bucket` has used its budget in this window, else None.
    Counts nothing."""
    index, retry_after = window(time.time() if now is None else now, rate)
    used = cache.get(_key(bucket, rate, index), 0)
    return retry_after if used >= rate.count else None


def hit(bucket: str, rate: Rate, *, now: float | None = None) -> int | None:
    """Count one request against `bucket`; seconds to wait when that is over its budget,
    else None."""
    index, retry_after = window(time.time() if now is None else now, rate)
    key = _key(bucket, rate, index)
    try:
        used = cache.incr(key)
    except ValueError:  # the window's first request: the window ends, its count goes with it
        used = 1
        if not cache.add(key, used, timeout=rate.seconds + 1):
            with contextlib.suppress(ValueError):  # another process added it meanwhile
                used = cache.incr(key)
    return retry_after if used > rate.count else None
