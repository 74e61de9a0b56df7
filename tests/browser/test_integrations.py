"""An administrator creates an e-mail notification integration, sends a test notification and
sees it delivered, on the integration's page, the Outbox and the Events page; then creates
an API token."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from notifications.delivery import Courier
from notifications.models import Integration
from tests.browser.conftest import sign_in, snapshot
from tests.outbox import point_settings_at
from tests.smtpservers import require_test_host, smtp_server

pytestmark = pytest.mark.browser


def test_create_an_integration_and_send_a_test_notification(page):
    require_test_host()
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    with smtp_server() as server:
        point_settings_at(server.host, server.port)

        page.goto("/")
        sign_in(page, "root", "correct horse battery")
        page.click("nav >> text=Integrations")
        page.click("text=New integration")
        page.fill("#id_name", "Platform team")
        page.fill("#id_recipients", "ops@example.com\nnot-an-address")
        page.check("text=API deployed (api.deployed)")
        page.click("button:has-text('Create integration')")
        expect(page.locator("#field-recipients .errorlist")).to_contain_text(
            "Not an e-mail address: 'not-an-address'."
        )
        page.fill("#id_recipients", "ops@example.com, oncall@example.com")
        page.fill("#id_subject_prefix", "[Gateway]")
        page.click("button:has-text('Create integration')")
        expect(page.locator(".message.success")).to_contain_text(
            "Integration Platform team created."
        )

        page.click("button:has-text('Send test notification')")
        expect(page.locator(".message.success")).to_contain_text("Test notification queued")
        status = page.frame_locator("#test-status")
        expect(status.locator("#delivery .badge")).to_have_text("Queued")
        Courier().drain()  # what the worker does
        # The frame reloads itself while the message waits.
        expect(status.locator("#delivery .badge")).to_have_text("Sent")
        snapshot(page, "integration-test-sent")

        status.locator("text=Open it in the Outbox").click()
        expect(page.locator("h1")).to_have_text("[Gateway] Test notification from Platform team")
        expect(page.locator(".badge").first).to_have_text("Sent")
        page.click("text=← Outbox")
        row = page.locator("table.list tbody tr", has_text="Test notification from Platform team")
        expect(row.locator(".badge")).to_have_text("Sent")
        expect(row).to_contain_text("ops@example.com, oncall@example.com")
        snapshot(page, "integration-test-outbox")

        page.click("nav >> text=Events")
        expect(page.locator("#events tbody tr").first).to_contain_text("integration.test")
        page.locator("#events tbody tr").first.locator("a").click()
        expect(page.locator("#dispatches")).to_contain_text("Platform team")
        expect(page.locator("#dispatches .badge")).to_have_text("Sent")
        snapshot(page, "event-detail")

        page.click("nav >> text=Integrations")
        page.click("text=API tokens")
        page.fill("#id_name", "CI pipeline")
        page.click("button:has-text('Create token')")
        expect(page.locator("#token-secret")).to_contain_text("gm_")
        snapshot(page, "api-token-created")
        page.reload()  # sends the form again: no second token, and the secret is gone
        expect(page.locator(".message")).to_contain_text("already created its token")
        expect(page.locator("#token-secret")).to_have_count(0)
        expect(page.locator("#tokens tbody tr")).to_have_count(1)
        expect(page.locator("#tokens")).to_contain_text("CI pipeline")
    [received] = server.messages
    assert received.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    assert Integration.objects.get().events == ["api.deployed"]
