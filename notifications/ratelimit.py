"""The HTTP API's rate limit: requests counted in fixed windows, in the database.

Two budgets of API_RATE_LIMIT each (default "120/minute"): one per token for its requests,
and one per client address for requests without a valid token, so guessing tokens is
throttled too. Each request is counted by one atomic statement (an INSERT ... ON CONFLICT DO
UPDATE ... RETURNING on ApiRateCount), so the limit holds across every web worker and
machine: the cache's incr() (a read, then a write) let 154 of 160 concurrent requests through
a budget of 60. A window's rows are deleted once it is over, by the first request of a later
window.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from .models import ApiRateCount

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
    return f"{bucket}:{rate.seconds}:{index}"


def blocked(bucket: str, rate: Rate, *, now: float | None = None) -> int | None:
    """Seconds to wait when `bucket` has used its budget in this window, else None.
    Counts nothing."""
    index, retry_after = window(time.time() if now is None else now, rate)
    key = _key(bucket, rate, index)
    used = ApiRateCount.objects.filter(key=key).values_list("n", flat=True).first() or 0
    return retry_after if used >= rate.count else None


def hit(bucket: str, rate: Rate, *, now: float | None = None) -> int | None:
    """Count one request against `bucket`; seconds to wait when that is over its budget,
    else None. Inside a transaction, the count's row stays locked until it ends (PostgreSQL):
    count last, right before the commit."""
    now = time.time() if now is None else now
    index, retry_after = window(now, rate)
    ends = datetime.datetime.fromtimestamp((index + 1) * rate.seconds, tz=datetime.UTC)
    q = connection.ops.quote_name
    table = q(ApiRateCount._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({q('key')}, n, expires_at) VALUES (%s, 1, %s)"
            f" ON CONFLICT ({q('key')}) DO UPDATE SET n = {table}.n + 1 RETURNING n",
            [_key(bucket, rate, index), _datetime(ends)],
        )
        (used,) = cursor.fetchone()
    if used == 1:  # the first request of this bucket's window: forget the windows that ended
        now_as_datetime = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
        ApiRateCount.objects.filter(expires_at__lte=now_as_datetime).delete()
    return retry_after if used > rate.count else None


def _datetime(value: datetime.datetime):
    return ApiRateCount._meta.get_field("expires_at").get_db_prep_save(value, connection)
