"""GET /metrics: the outbox and its workers in the Prometheus text format (prometheus-client).

A custom collector reads the database at scrape time, so every web process (and machine)
serves the same figures: the workers write their counts there with each heartbeat
(health.heartbeat), as the web server never sees a delivery. Counters are sums since the
install, so they only grow, whichever process serves the scrape.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
from collections.abc import Iterator

from django.conf import settings
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from notifications import deliverystats
from notifications.models import Breaker
from notifications.outbox import counts_by_status

from .models import Tally, WorkerHeartbeat
from .status import ALIVE, oldest_due, worker_state

PREFIX = "gatewaymgr_"
SHOWN_FOR = datetime.timedelta(hours=1)


def access_refusal(
    *, token: str, authorization: str, client: str, forwarded: bool, trusted_proxies: int
) -> tuple[int, str] | None:
    """Whether a scrape may read the metrics: None, or (status, why not). With METRICS_TOKEN
    set, only a request that carries it as a bearer token; without one, only a client on this
    machine (loopback), and not one relayed by a proxy the settings do not know of (pure)."""
    if token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8"), token.encode("utf-8")
        ):
            return None
        return 401, "Send the metrics token: Authorization: Bearer <METRICS_TOKEN>.\n"
    try:
        loopback = ipaddress.ip_address(client).is_loopback
    except ValueError:
        loopback = False
    if loopback and (trusted_proxies > 0 or not forwarded):
        return None
    return 403, (
        "/metrics answers only this machine (loopback) while METRICS_TOKEN is not set; set it "
        "to let Prometheus scrape from elsewhere.\n"
    )


class OutboxCollector(Collector):
    """Reads the outbox, the tallies and the heartbeats at scrape time."""

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        by_status = GaugeMetricFamily(
            PREFIX + "outbox_messages", "Outbox messages by status.", labels=["status"]
        )
        for status, count in counts_by_status().items():
            by_status.add_metric([status], count)
        yield by_status

        due = oldest_due(now)
        yield GaugeMetricFamily(
            PREFIX + "outbox_oldest_due_age_seconds",
            "How long the queued message due the longest has waited since it was due "
            "(0 when none is due).",
            value=max(0.0, (now - due).total_seconds()) if due else 0.0,
        )
        until = Breaker.objects.filter(pk=1).values_list("until", flat=True).first()
        yield GaugeMetricFamily(
            PREFIX + "outbox_held",
            "1 while the SMTP server cannot be reached and the queue waits as a whole.",
            value=1 if until is not None and until > now else 0,
        )

        tallies: dict[str, dict[str, float]] = {}
        for metric, key, value in Tally.objects.values_list("metric", "key", "value"):
            tallies.setdefault(metric, {})[key] = value
        yield from self._deliveries(tallies)
        yield self._latency(tallies)
        refreshes = CounterMetricFamily(
            PREFIX + "oauth_token_refreshes",
            "OAuth 2.0 access tokens asked of the provider, by result.",
            labels=["result"],
        )
        for result in ("ok", "failed"):
            refreshes.add_metric(
                [result], tallies.get(deliverystats.TOKEN_REFRESHES, {}).get(result, 0)
            )
        yield refreshes
        yield from self._workers(now)

    @staticmethod
    def _deliveries(tallies: dict[str, dict[str, float]]) -> Iterator[Metric]:
        deliveries = CounterMetricFamily(
            PREFIX + "outbox_deliveries",
            "Delivery attempts by outcome (sent, partly sent, retry, failed) and reason.",
            labels=["outcome", "reason"],
        )
        for key, value in sorted(tallies.get(deliverystats.DELIVERIES, {}).items()):
            outcome, _, reason = key.partition("|")
            deliveries.add_metric([outcome, reason], value)
        yield deliveries

    @staticmethod
    def _latency(tallies: dict[str, dict[str, float]]) -> Metric:
        stored = tallies.get(deliverystats.LATENCY, {})
        buckets, total = [], 0.0
        for bound in deliverystats.LATENCY_BUCKETS:
            label = deliverystats.bucket_label(bound)
            total += stored.get(label, 0)
            buckets.append((label, total))  # Prometheus's buckets are cumulative
        return HistogramMetricFamily(
            PREFIX + "outbox_delivery_latency_seconds",
            "Seconds from a message being stored to the server accepting it.",
            buckets=buckets,
            sum_value=tallies.get(deliverystats.LATENCY_SUM, {}).get("", 0.0),
        )

    @staticmethod
    def _workers(now) -> Iterator[Metric]:
        seen = GaugeMetricFamily(
            PREFIX + "worker_last_seen_timestamp_seconds",
            "When each worker's heartbeat was last recorded (Unix time).",
            labels=["worker"],
        )
        up = GaugeMetricFamily(
            PREFIX + "worker_up",
            "1 while a worker's heartbeat is recent, 0 once it stopped or is gone.",
            labels=["worker"],
        )
        alive = 0
        timeout = settings.HEALTH_WORKER_TIMEOUT_SECONDS
        # Workers seen in the last hour: each restart is a new worker, and a series per
        # worker that ever ran would only grow.
        rows = WorkerHeartbeat.objects.filter(last_seen__gte=now - SHOWN_FOR).values_list(
            "worker", "last_seen", "stopped_at"
        )
        for worker, last_seen, stopped_at in rows:
            state = worker_state(last_seen, stopped_at, now, timeout)
            alive += state == ALIVE
            seen.add_metric([worker], last_seen.timestamp())
            up.add_metric([worker], 1 if state == ALIVE else 0)
        yield seen
        yield up
        yield GaugeMetricFamily(
            PREFIX + "workers_up", "Workers whose heartbeat is recent.", value=alive
        )


registry = CollectorRegistry(auto_describe=False)
registry.register(OutboxCollector())
