"""GET /healthz and /readyz (issue 14): for load balancers and Kubernetes. JSON, no sign-in,
nothing secret; /readyz is 503 naming the check that failed. Against a real worker process."""

from __future__ import annotations

import json
import signal

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import override_settings

from health import views
from tests.workers import wait_until

FAST_WORKER = {"HEALTH_HEARTBEAT_SECONDS": "0.2"}
FAST_CONSOLE = override_settings(HEALTH_HEARTBEAT_SECONDS=0.2, HEALTH_WORKER_TIMEOUT_SECONDS=5)


def probe(client, url: str, **extra) -> tuple[int, dict]:
    response = client.get(url, **extra)
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in response.headers
    return response.status_code, json.loads(response.content)


@pytest.mark.django_db
def test_healthz_answers_200_without_sign_in_whatever_the_host(client):
    assert probe(client, "/healthz") == (200, {"status": "ok"})
    # A load balancer asks by the machine's address, which ALLOWED_HOSTS does not list.
    assert probe(client, "/healthz", HTTP_HOST="10.1.2.3:8000")[0] == 200


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_readyz_follows_the_worker_it_sees(workers, client):
    status, body = probe(client, "/readyz")
    assert status == 503 and body["status"] == "not ready"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["migrations"] == {"ok": True}
    assert body["checks"]["worker"]["ok"] is False
    assert "outbox_worker" in body["checks"]["worker"]["detail"]

    worker = workers(**FAST_WORKER)
    wait_until(lambda: probe(client, "/readyz")[0] == 200, what="/readyz 200 with a worker")
    status, body = probe(client, "/readyz", HTTP_HOST="10.1.2.3:8000")
    assert status == 200 and body["status"] == "ready"
    assert all(check == {"ok": True} for check in body["checks"].values())

    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_until(lambda: probe(client, "/readyz")[0] == 503, what="/readyz 503 once it is gone")
    assert probe(client, "/readyz")[1]["checks"]["worker"]["ok"] is False


@pytest.mark.django_db(transaction=True)
def test_readyz_says_when_a_migration_is_not_applied(client, monkeypatch):
    monkeypatch.setattr(views, "_migrations_applied", False)
    recorder = MigrationRecorder(connection)
    row = recorder.migration_qs.get(app="health", name="0001_initial")
    row.delete()  # only the record: the tables stay
    try:
        status, body = probe(client, "/readyz")
    finally:
        recorder.record_applied("health", "0001_initial")
    assert status == 503
    assert body["checks"]["migrations"]["ok"] is False
    assert "manage.py migrate" in body["checks"]["migrations"]["detail"]
    monkeypatch.setattr(views, "_migrations_applied", False)
    assert probe(client, "/readyz")[1]["checks"]["migrations"] == {"ok": True}


@pytest.mark.django_db
def test_readyz_says_when_the_database_does_not_answer_and_tells_no_secret(client, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("could not connect to db.internal as gatewaymgr with password hunter2")

    monkeypatch.setattr(connection, "cursor", broken)
    status, body = probe(client, "/readyz")
    assert status == 503
    assert body["checks"]["database"]["ok"] is False
    assert "hunter2" not in json.dumps(body) and "db.internal" not in json.dumps(body)
    assert body["checks"]["worker"]["ok"] is False  # not checked


@pytest.mark.django_db
def test_probes_are_not_behind_sign_in_while_pages_are(client):
    assert client.get("/").status_code == 302  # Home wants a sign-in
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code in (200, 503)
