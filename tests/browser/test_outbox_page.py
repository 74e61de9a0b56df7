"""An administrator finds a failed e-mail in the Outbox, reads why, and retries it."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from notifications.delivery import Courier
from notifications.models import OutboundEmail, Status
from tests.browser.conftest import sign_in, snapshot
from tests.outbox import point_settings_at, queue
from tests.smtpservers import Recorder, require_test_host, smtp_server

pytestmark = pytest.mark.browser


def test_find_a_failed_email_and_retry_it(page, settings):
    require_test_host()
    settings.OUTBOX_RETRY_FIRST_DELAY = 0
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    recorder = Recorder(refuse_recipients={"gone@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(12, prefix="Welcome to the gateway")
        queue(1, recipients=("gone@example.com",), prefix="Your API key")
        Courier().drain()

        page.goto("/outbox/")
        sign_in(page, "root", "correct horse battery")
        expect(page.locator("#bulk")).to_contain_text("12 of 12 delivered, 0 failed")
        page.click(".status-counts a.status-failed")
        row = page.locator("table.list tbody tr")
        expect(row).to_have_count(1)
        expect(row).to_contain_text("gone@example.com")
        snapshot(page, "outbox-failed")
        page.click("text=Your API key 0")
        expect(page.locator("#recipients")).to_contain_text("550 5.1.1 No such user")
        expect(page.locator("#attempts")).to_contain_text("refused every recipient")

        recorder.refuse_recipients.clear()  # the mailbox exists again
        page.click("button:has-text('Retry now')")
        expect(page.locator(".message.success")).to_contain_text("sent again shortly")
        Courier().drain()  # what the worker does
        page.reload()
        expect(page.locator(".badge").first).to_have_text("Sent")
        expect(page.locator(".errorbox")).to_have_count(0)  # the old error is history now
        snapshot(page, "outbox-detail")
    email = OutboundEmail.objects.get(subject="Your API key 0")
    assert email.status == Status.SENT
    assert len(server.messages) == 13
