"""GET /metrics (issue 14): the outbox, its deliveries and its workers in the Prometheus text
format, from real worker processes delivering into a real SMTP server; and who may read it."""

from __future__ import annotations

import signal

import pytest
from django.test import override_settings
from prometheus_client.parser import text_string_to_metric_families

from health.heartbeat import Heartbeat
from notifications import deliverystats
from notifications.models import OutboundEmail, Status
from smtpsettings.tokencache import SharedTokens, token_refreshed
from tests.outbox import point_settings_at, queue
from tests.smtpservers import Recorder, smtp_server
from tests.workers import wait_until

FAST_WORKER = {"HEALTH_HEARTBEAT_SECONDS": "0.2"}
FAST_CONSOLE = override_settings(HEALTH_HEARTBEAT_SECONDS=0.2, HEALTH_WORKER_TIMEOUT_SECONDS=5)


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}, parsed by prometheus-client."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# Who may read it.


@pytest.mark.django_db
@override_settings(METRICS_TOKEN="s3cret-metrics-token")
def test_with_a_token_metrics_refuse_a_request_without_it_or_with_another(client):
    refused = client.get("/metrics")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith("Bearer")
    assert b"gatewaymgr_" not in refused.content
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic czNjcmV0").status_code == 401
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")
    assert ok.status_code == 200 and b"gatewaymgr_outbox_messages" in ok.content


@pytest.mark.django_db
@override_settings(METRICS_TOKEN="")
def test_without_a_token_only_this_machine_may_read_metrics(client):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.7").status_code == 403
    # Relayed by a proxy on this machine that the settings do not know of: not loopback.
    relayed = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert relayed.status_code == 403
    assert b"METRICS_TOKEN" in relayed.content


@pytest.mark.django_db
@override_settings(METRICS_TOKEN="", TRUSTED_PROXY_COUNT=1)
def test_behind_a_declared_proxy_the_client_address_decides(client):
    far = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert far.status_code == 403
    near = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="127.0.0.1")
    assert near.status_code == 200


@pytest.mark.django_db
def test_metrics_need_no_sign_in_and_answer_whatever_the_host_header(client):
    response = client.get("/metrics", HTTP_HOST="10.1.2.3:8000")  # Prometheus by pod address
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


@pytest.mark.django_db
def test_metrics_answer_get_only(client):
    assert client.post("/metrics").status_code == 405


# What they say, from real workers.


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_deliveries_show_up_in_the_counters_and_the_latency_histogram(workers, client):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        worker = workers(**FAST_WORKER)
        queue(5)
        wait_until(lambda: len(server.messages) == 5, what="5 messages delivered")
        wait_until(
            lambda: (
                value(
                    scrape(client),
                    "gatewaymgr_outbox_deliveries_total",
                    outcome="sent",
                    reason="none",
                )
                == 5
            ),
            what="the 5 deliveries counted in /metrics",
        )
    samples = scrape(client)
    assert value(samples, "gatewaymgr_outbox_messages", status="sent") == 5
    assert value(samples, "gatewaymgr_outbox_messages", status="queued") == 0
    assert value(samples, "gatewaymgr_outbox_delivery_latency_seconds_count") == 5
    assert value(samples, "gatewaymgr_outbox_delivery_latency_seconds_bucket", le="+Inf") == 5
    assert value(samples, "gatewaymgr_outbox_delivery_latency_seconds_sum") >= 0
    buckets = [
        value(samples, "gatewaymgr_outbox_delivery_latency_seconds_bucket", le=label)
        for label in map(deliverystats.bucket_label, deliverystats.LATENCY_BUCKETS)
    ]
    assert buckets == sorted(buckets)  # cumulative
    # The worker's heartbeat.
    name = f"{worker_host()}:{worker.pid}"
    assert value(samples, "gatewaymgr_worker_up", worker=name) == 1
    assert value(samples, "gatewaymgr_worker_last_seen_timestamp_seconds", worker=name) > 0
    assert value(samples, "gatewaymgr_workers_up") == 1

    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_until(lambda: value(scrape(client), "gatewaymgr_workers_up") == 0, what="the worker down")
    samples = scrape(client)
    assert value(samples, "gatewaymgr_worker_up", worker=name) == 0
    # Counters are sums in the database: they outlive the worker that counted them.
    assert value(samples, "gatewaymgr_outbox_deliveries_total", outcome="sent", reason="none") == 5


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_failures_show_up_with_their_reason(workers, client):
    recorder = Recorder(refuse_recipients={"nobody@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        workers(**FAST_WORKER)
        queue(2, recipients=("nobody@example.com",), prefix="Refused")
        queue(1, recipients=("nobody@example.com", "bob@example.com"), prefix="Half")
        wait_until(
            lambda: (
                OutboundEmail.objects.filter(status__in=[Status.FAILED, Status.SENT]).count() == 3
            ),
            what="the three settled",
        )
        wait_until(
            lambda: (
                value(
                    scrape(client),
                    "gatewaymgr_outbox_deliveries_total",
                    outcome="failed",
                    reason="recipients-refused",
                )
                == 2
            ),
            what="two refusals counted",
        )
    samples = scrape(client)
    assert (
        value(
            samples,
            "gatewaymgr_outbox_deliveries_total",
            outcome="partly sent",
            reason="recipients-refused",
        )
        == 1
    )
    assert value(samples, "gatewaymgr_outbox_messages", status="failed") == 2


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_an_unreachable_server_shows_as_held_in_metrics(workers, client):
    from tests.smtpservers import free_port

    point_settings_at("smtp.gatewaymgr.test", free_port())  # nothing listens there
    queue(1)
    workers(**FAST_WORKER)
    wait_until(lambda: value(scrape(client), "gatewaymgr_outbox_held") == 1, what="the queue held")
    assert value(scrape(client), "gatewaymgr_outbox_messages", status="queued") == 1


@pytest.mark.django_db(transaction=True)
def test_oauth_token_refreshes_and_failures_are_counted(client):
    """The hook in smtpsettings.tokencache, flushed by a heartbeat as a worker's would be."""
    deliverystats.take()  # what earlier tests counted in this process
    before = scrape(client)
    token_refreshed.send(sender=SharedTokens, ok=True)
    token_refreshed.send(sender=SharedTokens, ok=True)
    token_refreshed.send(sender=SharedTokens, ok=False)
    Heartbeat("test-host:1").beat("idle", {})
    after = scrape(client)
    name = "gatewaymgr_oauth_token_refreshes_total"
    assert value(after, name, result="ok") - value(before, name, result="ok") == 2
    assert value(after, name, result="failed") - value(before, name, result="failed") == 1


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_that_cannot_be_written_keeps_its_counts_for_the_next(client, monkeypatch):
    deliverystats.take()  # what earlier tests counted in this process
    token_refreshed.send(sender=SharedTokens, ok=True)
    beat = Heartbeat("test-host:2")
    monkeypatch.setattr(beat, "_write_row", lambda *args: (_ for _ in ()).throw(OSError("db")))
    with pytest.raises(OSError):
        beat.beat("idle", {})
    monkeypatch.undo()
    beat.beat("idle", {})
    assert value(scrape(client), "gatewaymgr_oauth_token_refreshes_total", result="ok") == 1


def worker_host() -> str:
    import socket

    return socket.gethostname()


@pytest.mark.django_db
def test_a_heartbeat_costs_the_same_for_one_delivery_or_a_thousand():
    """Deliveries are counted in memory (no SQL per message); a heartbeat writes one row per
    kind of outcome, however many messages it covers."""
    import datetime
    from types import SimpleNamespace

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    deliverystats.take()
    beat = Heartbeat("test-host:3")
    beat.beat("idle", {})  # its row exists: later beats update it

    def queries_for(messages: int) -> int:
        now = timezone.now()
        for pk in range(messages):
            email = SimpleNamespace(pk=pk, subject="s", created_at=now - datetime.timedelta(2))
            deliverystats.give_back(deliverystats.counted_for(email, "sent", None, now))
        with CaptureQueriesContext(connection) as queries:
            beat.beat("idle", {"sent": messages})
        return len(queries)

    queries_for(1)  # the first of each kind creates its tally rows
    assert queries_for(1000) == queries_for(1)
