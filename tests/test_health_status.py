"""Home as a status page, and the banner's other reasons (issue 14): is SMTP configured and what
it will do, the last delivery and the last failure with its reason, what waits, the workers
seen. Against real worker processes and a real SMTP server; the decisions also as a table."""

from __future__ import annotations

import datetime
import signal
import socket

import pytest
from django.test import override_settings
from django.utils import timezone
from freezegun import freeze_time

from health import status
from health.models import WorkerHeartbeat
from notifications.models import Breaker, DeliveryAttempt, OutboundEmail, Status
from tests.conftest import make_user
from tests.outbox import point_settings_at, queue
from tests.smtpservers import Recorder, smtp_server
from tests.workers import wait_until

FAST_WORKER = {"HEALTH_HEARTBEAT_SECONDS": "0.2"}
FAST_CONSOLE = override_settings(
    HEALTH_HEARTBEAT_SECONDS=0.2, HEALTH_WORKER_TIMEOUT_SECONDS=5, HEALTH_CACHE_SECONDS=0
)
BANNER = 'id="delivery-health"'
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)


def home(client) -> str:
    response = client.get("/")
    assert response.status_code == 200
    return response.content.decode()


def section(page: str, element_id: str) -> str:
    """The text of the element with this id, up to the next element with an id."""
    start = page.index(f'id="{element_id}"')
    return page[start : page.find(' id="', start + 5)]


# With real workers.


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_home_shows_the_worker_alive_then_gone(workers, admin_client):
    worker = workers(**FAST_WORKER)
    name = f"{socket.gethostname()}:{worker.pid}"
    wait_until(lambda: name in home(admin_client), what="the worker's heartbeat on Home")
    row = section(home(admin_client), "workers")
    assert "alive" in row and ("idle" in row or "delivering" in row)
    assert BANNER not in home(admin_client)

    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_until(lambda: "worker-gone" in home(admin_client), what="the worker shown gone")
    page = home(admin_client)
    assert "killed, crashed or its machine is down" in page
    assert BANNER in page and "No delivery worker has been seen since" in page


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_a_worker_stopped_cleanly_shows_stopped(workers, admin_client):
    worker = workers(**FAST_WORKER)
    wait_until(lambda: "worker-alive" in home(admin_client), what="the worker alive")
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    wait_until(lambda: "worker-stopped" in home(admin_client), what="the worker stopped")
    page = home(admin_client)
    assert "stopped cleanly" in page
    assert "No delivery worker is running: the last one stopped at" in page


@pytest.mark.django_db(transaction=True)
@FAST_CONSOLE
def test_home_shows_the_last_delivery_and_the_last_failure_with_its_reason(workers, admin_client):
    recorder = Recorder(refuse_recipients={"nobody@example.com": "550 5.1.1 No such user here"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        workers(**FAST_WORKER)
        queue(1, prefix="Welcome")
        wait_until(lambda: "Welcome 0" in section(home(admin_client), "last-success"), what="ok")
        queue(1, recipients=("nobody@example.com",), prefix="Doomed")
        wait_until(lambda: "Doomed 0" in section(home(admin_client), "last-failure"), what="ko")
    page = home(admin_client)
    failure = section(page, "last-failure")
    assert "550 5.1.1 No such user here" in failure and "failed" in failure
    email = OutboundEmail.objects.get(subject="Doomed 0")
    assert f'href="/outbox/{email.pk}/"' in failure
    assert ">1<" in section(page, "count-failed")
    # SMTP: configured, with the settings page's plan sentence.
    smtp = page[page.index('id="status-smtp"') : page.index('id="status-outbox"')]
    assert f"Connects to {server.host}:{server.port}" in smtp


# Without workers: the page and the banner from rows as the workers would leave them.


@pytest.mark.django_db
@FAST_CONSOLE
def test_home_says_when_no_smtp_server_is_configured_and_no_worker_ever_ran(admin_client):
    page = home(admin_client)
    assert "No SMTP server is configured" in page
    assert "No worker has ever been seen" in page
    assert "No delivery worker has run yet" in page  # the banner
    assert "nothing is due" in section(page, "oldest-waiting")


@pytest.mark.django_db
@FAST_CONSOLE
def test_mail_waiting_too_long_puts_up_the_banner_with_a_live_worker(admin_client):
    now = timezone.now()
    alive(now)
    queue(2)
    assert BANNER not in home(admin_client)  # due now: a worker takes it
    OutboundEmail.objects.update(next_attempt_at=now - datetime.timedelta(minutes=12))
    page = home(admin_client)
    assert BANNER in page and "Mail has waited 12 minutes" in page
    assert "due since" in section(page, "oldest-waiting")
    assert ">2<" in section(page, "count-queued")


@pytest.mark.django_db
@FAST_CONSOLE
def test_an_unreachable_server_puts_up_the_banner_with_the_reason(admin_client):
    alive(timezone.now())
    Breaker.objects.create(
        pk=1,
        until=timezone.now() + datetime.timedelta(minutes=2),
        failures=3,
        reason="Nothing accepts connections on smtp.example.com:587.",
    )
    for url in ("/", "/outbox/", "/users/"):
        page = admin_client.get(url).content.decode()
        assert BANNER in page
        assert "The SMTP server cannot be reached." in page
        assert "Nothing accepts connections on smtp.example.com:587." in page
        assert 'href="/settings/smtp/"' in page.split(BANNER)[1]


@pytest.mark.django_db
@FAST_CONSOLE
@override_settings(HEALTH_FAILED_ATTEMPTS=3)
def test_the_last_attempts_failing_puts_up_the_banner(admin_client):
    alive(timezone.now())
    queue(1)
    email = OutboundEmail.objects.get()
    for outcome in ("sent", "failed", "retry"):
        DeliveryAttempt.objects.create(email=email, outcome=outcome, reply="451 4.3.0 Try later")
    assert BANNER not in home(admin_client)  # two of the last three
    DeliveryAttempt.objects.create(email=email, outcome="failed", reply="554 5.7.1 Refused")
    page = home(admin_client)
    assert BANNER in page and "The last 3 delivery attempts failed." in page
    assert "554 5.7.1 Refused" in page


@pytest.mark.django_db
@FAST_CONSOLE
def test_a_user_sees_only_the_parts_they_may_see(client):
    client.force_login(make_user("inviter", "gatewaymgr.view_invitation"))
    page = home(client)
    assert BANNER in page  # every signed-in user learns that mail is not going out
    assert 'href="/outbox/"' not in page  # but gets no link that ends in a 403
    assert 'id="status-outbox"' not in page and 'id="status-smtp"' not in page
    assert 'id="workers"' not in page
    client.force_login(make_user("nobody"))
    page = home(client)
    assert 'id="no-access"' in page and 'href="/settings/smtp/"' not in page


@pytest.mark.django_db
def test_the_sign_in_page_shows_no_banner(client):
    assert BANNER not in client.get("/login/").content.decode()


@pytest.mark.django_db
@override_settings(HEALTH_CACHE_SECONDS=60)
def test_the_banner_is_read_once_per_process_and_period(django_assert_max_num_queries):
    status.forget_cached()
    first = status.cached_health()
    with django_assert_max_num_queries(0):
        assert status.cached_health() == first
    status.forget_cached()


@pytest.mark.django_db
def test_the_banner_costs_a_few_indexed_queries(django_assert_max_num_queries):
    with django_assert_max_num_queries(5):
        status.current_health()


# The decisions, as a table.


def snap(**changes) -> status.Snapshot:
    values = {
        "now": NOW,
        "worker_alive": True,
        "last_worker_seen": NOW,
        "last_worker_stopped": False,
        "oldest_due": None,
        "breaker_until": None,
        "breaker_reason": "",
        "recent_outcomes": (),
    }
    values.update(changes)
    return status.Snapshot(**values)


def keys(snapshot: status.Snapshot) -> list[str]:
    return [p.key for p in status.problems(snapshot, queue_delay=300, failed_attempts=3)]


MIN = datetime.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [
        (snap(), []),
        (snap(worker_alive=False, last_worker_seen=None), ["no-worker"]),
        (snap(worker_alive=False, last_worker_seen=NOW - MIN), ["no-worker"]),
        (snap(oldest_due=NOW - 4 * MIN), []),
        (snap(oldest_due=NOW - 6 * MIN), ["mail-waiting"]),
        # No worker explains the wait: one line, not two.
        (snap(worker_alive=False, oldest_due=NOW - 60 * MIN), ["no-worker"]),
        (snap(breaker_until=NOW + MIN, oldest_due=NOW - 60 * MIN), ["failing"]),
        (snap(breaker_until=NOW - MIN), []),
        (snap(recent_outcomes=(("failed", NOW, ""),) * 3), ["failing"]),
        (snap(recent_outcomes=(("failed", NOW, ""),) * 2), []),
        (snap(recent_outcomes=(("retry", NOW, ""), ("sent", NOW, ""), ("failed", NOW, ""))), []),
        # Failures long ago, and nothing since: nothing is failing now.
        (snap(recent_outcomes=(("failed", NOW - 2000 * MIN, ""),) * 3), []),
    ],
)
def test_what_the_banner_says(snapshot, expected):
    assert keys(snapshot) == expected


def test_the_no_worker_line_says_what_to_do():
    (problem,) = status.problems(
        snap(worker_alive=False, last_worker_seen=None), queue_delay=300, failed_attempts=3
    )
    assert problem.command == ".venv/bin/python manage.py outbox_worker"
    assert "scripts/run" in problem.note


@pytest.mark.parametrize(
    ("seen_ago", "stopped", "state"),
    [(0, False, "alive"), (14, False, "alive"), (16, False, "gone"), (1, True, "stopped")],
)
def test_worker_state(seen_ago, stopped, state):
    seen = NOW - datetime.timedelta(seconds=seen_ago)
    assert status.worker_state(seen, NOW if stopped else None, NOW, timeout=15) == state


def alive(now: datetime.datetime) -> None:
    WorkerHeartbeat.objects.create(
        worker="elsewhere:1", host="elsewhere", pid=1, started_at=now, last_seen=now
    )


def test_statuses_are_the_outbox_statuses():
    assert {"queued", "sending", "failed"} <= set(Status.values)


@pytest.mark.django_db
@FAST_CONSOLE
@override_settings(HEALTH_FAILED_ATTEMPTS=1)
def test_the_servers_words_are_shown_only_to_who_may_see_the_outbox_or_settings(client):
    alive(timezone.now())
    queue(1)
    email = OutboundEmail.objects.get()
    DeliveryAttempt.objects.create(
        email=email, outcome="failed", reply="carol@example.com: 550 5.1.1 Unknown"
    )
    client.force_login(make_user("viewer", "notifications.view_outboundemail"))
    assert "carol@example.com: 550" in home(client)
    client.force_login(make_user("inviter", "gatewaymgr.view_invitation"))
    page = home(client)
    assert BANNER in page and "The last 1 delivery attempts failed." in page
    assert "carol@example.com" not in page


@pytest.mark.django_db
def test_a_banner_computed_under_another_clock_is_not_kept(admin_client, settings):
    """A page rendered while the clock read otherwise (freezegun in a test, a clock stepped
    back) must not pin its banner: the cache's age came out negative, and the stale banner
    stayed for good."""
    settings.HEALTH_CACHE_SECONDS = 5
    with freeze_time("2026-11-25 22:00:00"):
        assert BANNER in home(admin_client)  # no worker yet
    alive(timezone.now())
    assert BANNER not in home(admin_client)
