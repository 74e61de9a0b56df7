"""Delivery health on every console page (issue 14): kill the worker that delivers the outbox,
and every page says so and what to do; mail that waits too long, or deliveries that keep
failing, say so too. Against real worker processes (tests/workers.py) and a real SMTP server."""

from __future__ import annotations

import signal

import pytest
from django.test import override_settings

from notifications.models import OutboundEmail, Status
from tests.outbox import point_settings_at, queue
from tests.smtpservers import smtp_server
from tests.workers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

# Small thresholds for the test processes: a heartbeat every 0.2 s, gone after 5 s (generous:
# a loaded machine may hold a heartbeat back for a second or two).
FAST_WORKER = {"HEALTH_HEARTBEAT_SECONDS": "0.2"}
FAST_CONSOLE = override_settings(
    HEALTH_HEARTBEAT_SECONDS=0.2, HEALTH_WORKER_TIMEOUT_SECONDS=5, HEALTH_CACHE_SECONDS=0
)
CONSOLE_PAGES = ["/", "/outbox/", "/users/", "/settings/smtp/", "/integrations/", "/events/"]
BANNER = 'id="delivery-health"'


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


def banner_on_every_page(client) -> bool:
    return all(BANNER in page(client, url) for url in CONSOLE_PAGES)


def sent() -> int:
    return OutboundEmail.objects.filter(status=Status.SENT).count()


@FAST_CONSOLE
def test_killing_the_worker_puts_a_banner_on_every_console_page(workers, admin_client):
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        worker = workers(**FAST_WORKER)
        queue(3)
        wait_until(lambda: sent() == 3, what="the worker to deliver")
        wait_until(lambda: BANNER not in page(admin_client, "/"), what="no banner while it lives")

        worker.send_signal(signal.SIGKILL)
        worker.wait()
        queue(1)  # an invitation, say: it sits "Queued"
        wait_until(lambda: banner_on_every_page(admin_client), what="the banner on every page")
    home = page(admin_client, "/outbox/")
    assert "No delivery worker" in home
    assert "manage.py outbox_worker" in home  # what to do
    assert 'href="/outbox/"' in home.split(BANNER)[1]  # and where to look
