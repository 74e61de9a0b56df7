"""What an accepted POST /api/v1/events costs the database: one write transaction, and no
statement that only repeats what the request already knows (issue 14, Throughput). Speed
itself is measured by bench/api_throughput.py."""

from __future__ import annotations

import fcntl
import io
import json
import re
import threading

import pytest
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from notifications import sqlite_writers
from notifications.models import ApiToken, Event, Integration, OutboundEmail
from notifications.tokens import LAST_USED_PRECISION, create

URL = "/api/v1/events"
DEPLOYED = {"type": "api.deployed", "payload": {"api": "orders", "version": "2", "gateway": "gw"}}
WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def secret() -> str:
    Integration.objects.create(name="Ops", recipients=["ops@example.com"], events=["api.deployed"])
    Integration.objects.create(name="Other", recipients=["x@example.com"], events=["api.retired"])
    return create("CI", None)[1]


def post(client, secret: str, body=DEPLOYED):
    headers = {"Authorization": f"Bearer {secret}"}
    return client.post(URL, json.dumps(body), content_type="application/json", headers=headers)


class Writes:
    """Each write statement, with the outermost transaction it ran in (None: autocommit)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int | None]] = []

    def __call__(self, execute, sql, params, many, context):
        if WRITE.match(sql):
            outer = id(connection.atomic_blocks[0]) if connection.in_atomic_block else None
            self.seen.append((sql.split("(")[0][:60], outer))
        return execute(sql, params, many, context)


@pytest.mark.django_db(transaction=True)
def test_an_accepted_event_is_one_write_transaction(client, secret):
    assert post(client, secret).status_code == 202  # the first also wakes a worker up
    writes = Writes()
    with connection.execute_wrapper(writes):
        response = post(client, secret)
    assert response.status_code == 202
    assert response.json()["integrations"] == 1 and response.json()["messages"] == 1
    transactions = {outer for _, outer in writes.seen}
    # The rate count, the event, its message and its dispatch: all or nothing, one commit.
    assert len(transactions) == 1 and None not in transactions, writes.seen
    assert any("notifications_event" in sql for sql, _ in writes.seen)
    assert Event.objects.count() == 2 and OutboundEmail.objects.count() == 2


@pytest.mark.django_db
def test_a_token_is_marked_used_once_a_minute_not_on_every_request(client, secret):
    writes = Writes()
    with connection.execute_wrapper(writes):
        for _ in range(3):
            assert post(client, secret).status_code == 202
    token_updates = [sql for sql, _ in writes.seen if "notifications_apitoken" in sql]
    assert len(token_updates) == 1, writes.seen
    first_use = ApiToken.objects.get().last_used_at
    assert first_use is not None
    # A minute later, the next request records it again.
    ApiToken.objects.update(last_used_at=first_use - LAST_USED_PRECISION)
    assert post(client, secret).status_code == 202
    assert ApiToken.objects.get().last_used_at > first_use - LAST_USED_PRECISION
    assert ApiToken.objects.get().last_used_at <= timezone.now()


@pytest.mark.django_db
def test_the_answer_counts_the_messages_without_asking_the_database_again(client, secret):
    post(client, secret)
    with CaptureQueriesContext(connection) as queries:
        assert post(client, secret).json()["messages"] == 1
    assert not [q["sql"] for q in queries if "COUNT(" in q["sql"] and "dispatch" in q["sql"]]


@pytest.mark.django_db
@override_settings(API_RATE_LIMIT="2/minute")
def test_bad_requests_count_against_the_tokens_budget_too(client, secret):
    bad = {"type": "api.deployed", "payload": {"api": "orders"}}
    assert post(client, secret, bad).status_code == 400
    assert post(client, secret).status_code == 202
    refused = post(client, secret, bad)
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    assert post(client, secret).status_code == 429
    assert Event.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_requests_reuse_their_database_connection(secret):
    """Each request used to open a connection of its own and close it at the end: on SQLite
    that also registers Django's functions and runs the PRAGMAs, on PostgreSQL it starts a
    server process. Through the WSGI handler, as gunicorn calls it (with the signals that
    close connections at the end of a request)."""
    application = WSGIHandler()

    def call() -> str:
        body = json.dumps(DEPLOYED).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": URL,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_AUTHORIZATION": f"Bearer {secret}",
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
        }
        statuses: list[str] = []
        response = application(environ, lambda status, headers: statuses.append(status))
        b"".join(response)
        response.close()  # what gunicorn does: request_finished, which closes old connections
        return statuses[0]

    assert call().startswith("202")
    first = connection.connection
    assert first is not None, "the connection was closed at the end of the request"
    assert call().startswith("202")
    assert connection.connection is first


@pytest.mark.django_db(transaction=True)
def test_on_sqlite_the_apis_writers_wait_in_the_kernels_queue(secret):
    """Not SQLite's sleep-and-retry: the API's write transaction waits on a file lock beside
    the database, and goes on as soon as the holder lets go."""
    path = sqlite_writers.queue_path()
    if path is None:
        pytest.skip("only SQLite lets one writer in at a time")
    answers: list[int] = []

    def request() -> None:
        try:
            answers.append(post(Client(), secret).status_code)
        finally:
            connection.close()

    with open(path, "a+b") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)  # another gunicorn worker writing
        waiting = threading.Thread(target=request)
        waiting.start()
        waiting.join(1)
        assert waiting.is_alive() and not Event.objects.exists()
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
        waiting.join(30)
    assert answers == [202] and Event.objects.count() == 1
