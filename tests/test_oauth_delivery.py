"""OAuth 2.0 through the real outbox: real worker processes sharing one access token, a token
that expires in the middle of a 1,000-message batch, a token endpoint that is down, and a
refused credential; and nowhere (logs, database, outbox rows) a token or a secret."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import trustme
from django.db import connection

from notifications.delivery import Courier
from notifications.models import DeliveryAttempt, OutboundBody, OutboundEmail, Status
from smtpsettings import store
from smtpsettings.models import OAuthAccessToken, SmtpSettings
from smtpsettings.tokencache import SharedTokens
from smtpsettings.transport import Step
from tests.oauth_server import XOAuth2Recorder, ca_bundle, token_endpoint
from tests.outbox import queue
from tests.smtpservers import smtp_server
from tests.test_at_rest import raw_sqlite_files
from tests.workers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
MAILBOX = "alerts@example.com"


@pytest.fixture
def endpoint(tmp_path, monkeypatch, settings):
    """The token endpoint; workers inherit SSL_CERT_FILE and the authority from the
    environment, as a deployment would set them."""
    ca = trustme.CA()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_bundle(tmp_path / "ca", ca)))
    with token_endpoint(ca) as running:
        settings.OAUTH_MICROSOFT_AUTHORITY = running.base
        monkeypatch.setenv("OAUTH_MICROSOFT_AUTHORITY", running.base)
        yield running


@pytest.fixture
def server(endpoint):
    with smtp_server(mode="starttls", recorder=XOAuth2Recorder(endpoint=endpoint)) as running:
        yield running


def use_microsoft(server, endpoint, **options) -> None:
    record = store.load()
    record.sender_email = MAILBOX
    record.host, record.port = server.host, server.port
    record.trusted_certificate = server.certificates.ca_pem
    record.options = {"timeout": 5, **options}
    record.username = MAILBOX
    record.auth_method = "oauth2"
    record.oauth_provider = "microsoft"
    record.oauth_tenant = endpoint.tenant
    record.oauth_client_id = endpoint.client_id
    record.seal_secret(
        "oauth_credential_token", {"kind": "client_secret", "value": endpoint.client_secret}
    )
    record.save()


def sent() -> int:
    return OutboundEmail.objects.filter(status=Status.SENT).count()


def assert_delivered_exactly_once(server, count: int) -> None:
    ids = Counter(m.message["Message-ID"] for m in server.messages)
    assert len(ids) == count and set(ids.values()) == {1}
    assert set(ids) == set(OutboundEmail.objects.values_list("message_id", flat=True))


def stored_text() -> str:
    """Everything the database holds about mail and settings, as text."""
    rows = [
        *OutboundEmail.objects.values_list("last_error", "recipients"),
        *OutboundBody.objects.values_list("token"),
        *DeliveryAttempt.objects.values_list("reply", "advice", "step"),
        *OAuthAccessToken.objects.values_list("key", "token", "scope"),
        *SmtpSettings.objects.values_list("oauth_credential_token", "oauth_credential_info"),
    ]
    return repr(rows)


def database_bytes() -> bytes:
    # Read by another process: closing a descriptor of the database file in this one would
    # drop SQLite's locks and corrupt the database for every later test.
    return raw_sqlite_files() if connection.vendor == "sqlite" else b""


def assert_no_secret_anywhere(endpoint, tmp_path: Path) -> None:
    secrets = [*endpoint.tokens, endpoint.client_secret]
    assert endpoint.tokens, "the endpoint issued no token: the test proves nothing"
    logs = "".join(p.read_text() for p in tmp_path.glob("worker-*.log"))
    text, raw = stored_text(), database_bytes()
    for secret in secrets:
        assert secret not in logs
        assert secret not in text
        assert secret.encode() not in raw


def test_four_workers_share_one_token(server, endpoint, workers, tmp_path):
    endpoint.delay = 1.0  # a token request in flight while the other workers ask for one
    server.recorder.data_delay = 0.01
    use_microsoft(server, endpoint)
    for _ in range(4):
        workers(OUTBOX_BATCH_SIZE="10")
    wait_until(
        lambda: sum("Starting worker" in p.read_text() for p in tmp_path.glob("worker-*.log")) == 4,
        what="four idle workers",
    )
    for _ in range(8):  # eight delivery tasks at once: every worker starts on one
        queue(25)
    wait_until(lambda: sent() == 200, timeout=120, what="200 delivered by four workers")
    signed_in = DeliveryAttempt.objects.values("worker").distinct().count()
    assert signed_in >= 2, "the workers did not run side by side: the test proves nothing"
    assert len(server.recorder.xoauth2) >= signed_in
    assert all(accepted for _, accepted in server.recorder.xoauth2)
    assert endpoint.count == 1  # one token request for every worker
    assert_delivered_exactly_once(server, 200)
    assert_no_secret_anywhere(endpoint, tmp_path)


def test_token_expiring_mid_batch_is_refreshed_and_nothing_is_lost(
    server, endpoint, workers, tmp_path
):
    endpoint.lifetime = 3
    server.recorder.hold_at = 500  # there, the first token runs out
    use_microsoft(server, endpoint, restart_threshold=100)
    queue(1000)
    workers(OUTBOX_BATCH_SIZE="1000")
    wait_until(lambda: sent() == 1000, timeout=300, what="1,000 delivered")
    assert_delivered_exactly_once(server, 1000)
    assert endpoint.count >= 2  # the expired token was replaced ...
    attempts = server.recorder.xoauth2
    assert len(attempts) >= 10 and all(accepted for _, accepted in attempts)  # ... before use
    assert DeliveryAttempt.objects.exclude(outcome="sent").count() == 0
    assert_no_secret_anywhere(endpoint, tmp_path)


def test_token_endpoint_down_mail_waits_then_goes(server, endpoint, workers, tmp_path):
    endpoint.down = True
    use_microsoft(server, endpoint)
    queue(20)
    workers()
    tried = DeliveryAttempt.objects.filter(step="token", outcome="retry")
    wait_until(
        lambda: tried.values("email").distinct().count() == 20,
        what="the worker to try all 20 while the token endpoint is down",
    )
    assert not OutboundEmail.objects.filter(status__in=[Status.SENT, Status.FAILED]).exists()
    advice = tried.first().advice
    assert "No token from" in advice and "will be retried" in advice
    assert server.recorder.xoauth2 == []
    endpoint.down = False
    wait_until(lambda: sent() == 20, timeout=120, what="all 20 delivered once it is back")
    assert_delivered_exactly_once(server, 20)
    assert_no_secret_anywhere(endpoint, tmp_path)


def test_a_refused_credential_holds_the_queue_and_says_why(server, endpoint):
    """No server refused the mail (issue 12: only a 5xx reply to a message fails it): the queue
    waits, uncharged, with the provider's words, until the settings are fixed."""
    use_microsoft(server, endpoint)
    endpoint.client_secret = "the secret was replaced at Microsoft"
    queue(3)
    Courier(worker="test").drain()
    waiting = OutboundEmail.objects.filter(status=Status.QUEUED, attempts=0)
    assert waiting.count() == 3
    assert "AADSTS7000215 means the client secret is wrong" in waiting.first().last_error
    assert server.recorder.xoauth2 == [] and endpoint.count == 1


def test_concurrent_sign_ins_make_one_token_request(server, endpoint):
    """Single flight at its core: four threads (four database connections) ask at once."""
    endpoint.delay = 0.5
    use_microsoft(server, endpoint)
    record = store.load()
    barrier, tokens, errors = threading.Barrier(4), [], []

    def sign_in() -> None:
        try:
            barrier.wait()
            tokens.append(SharedTokens(record, timeout=5).get(Step("token", True, 0.0))[0])
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=sign_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert endpoint.count == 1
    assert len(tokens) == 4 and len(set(tokens)) == 1
