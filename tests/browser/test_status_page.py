"""Home as a status page (issue 14), in Chromium: with no worker the banner says so and what to
do; a real worker starts, delivers into a real SMTP server, and Home shows it alive, the last
delivery and the counts; its death brings the banner back. Fits a phone too."""

import signal

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from tests.browser.conftest import sign_in, snapshot
from tests.outbox import point_settings_at, queue
from tests.smtpservers import smtp_server

pytestmark = pytest.mark.browser

TIMEOUT = 60_000  # ms: polled by Playwright, never asserted on as a duration


def reload_until(page, locator: str, text: str) -> None:
    """Home is a page, not a live view: reload until it shows `text` (at most a minute)."""
    for _ in range(120):
        page.reload()
        if text in (page.locator(locator).text_content() or ""):
            return
        page.wait_for_timeout(500)
    expect(page.locator(locator)).to_contain_text(text)


def reload_until_gone(page, locator: str) -> None:
    """Reload until nothing matches `locator` (at most a minute)."""
    for _ in range(120):
        page.reload()
        if page.locator(locator).count() == 0:
            return
        page.wait_for_timeout(500)
    expect(page.locator(locator)).to_have_count(0)


def test_the_status_page_follows_the_worker(page, settings, workers):
    settings.HEALTH_HEARTBEAT_SECONDS = 0.2
    # Generous: a loaded machine may hold a heartbeat back for a second or two.
    settings.HEALTH_WORKER_TIMEOUT_SECONDS = 5
    settings.HEALTH_CACHE_SECONDS = 0
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        page.goto("/")
        sign_in(page, "root", "correct horse battery")

        banner = page.locator("#delivery-health")
        expect(banner).to_contain_text("No delivery worker has run yet")
        expect(banner.locator("code")).to_have_text(".venv/bin/python manage.py outbox_worker")
        expect(page.locator("#status-smtp")).to_contain_text(f"Connects to {server.host}")
        snapshot(page, "status-no-worker")

        worker = workers(HEALTH_HEARTBEAT_SECONDS="0.2")
        queue(3, prefix="Welcome")
        reload_until(page, "#last-success", "Welcome")
        reload_until_gone(page, "#delivery-health")
        expect(page.locator("#workers tbody tr").first).to_contain_text("alive")
        expect(page.locator("#count-queued")).to_have_text("0")
        snapshot(page, "status-healthy")

        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        overflow = page.evaluate(
            "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
        )
        assert overflow <= 0
        snapshot(page, "status-phone")
        page.set_viewport_size({"width": 1280, "height": 900})

        worker.send_signal(signal.SIGKILL)
        worker.wait()
        reload_until(page, "#workers", "gone")
        expect(banner).to_contain_text("No delivery worker has been seen since")
        expect(banner.locator("a", has_text="Open the Outbox")).to_have_attribute(
            "href", "/outbox/"
        )
        page.click("text=Open the Outbox")
        expect(page.locator("#delivery-health")).to_be_visible()  # on the Outbox too
        snapshot(page, "status-worker-gone")
