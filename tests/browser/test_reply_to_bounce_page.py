"""Reply-To and the bounce address on Settings -> SMTP (issue 13): a mistake is said at its
field, a save says where replies and bounces go, and the history records both."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from smtpsettings import store
from tests.browser.conftest import sign_in, snapshot

pytestmark = pytest.mark.browser


def test_administrator_sets_reply_to_and_the_bounce_address(page):
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    page.goto("/settings/smtp/")
    sign_in(page, "root", "correct horse battery")
    page.fill("#id_sender_email", "gateway@example.com")
    page.fill("#id_host", "smtp.example.com")
    page.fill("#id_reply_to", "support at example.com")
    page.fill("#id_bounce_address", "Bounces <bounces@example.com>")
    page.click("button:has-text('Save settings')")

    expect(page.locator(".errorbox").first).to_contain_text("Nothing was saved")
    expect(page.locator("#field-reply_to .errorlist")).to_contain_text(
        "Enter a complete e-mail address, such as support@example.com."
    )
    expect(page.locator("#field-bounce_address .errorlist")).to_contain_text(
        "Enter a complete e-mail address, such as bounces@example.com."
    )
    assert store.load().host == ""
    snapshot(page, "smtp-reply-to-errors")

    page.fill("#id_reply_to", "support@example.com")
    page.fill("#id_bounce_address", "bounces@example.com")
    page.click("button:has-text('Save settings')")
    expect(page.locator(".message.success")).to_contain_text("SMTP settings saved.")
    expect(page.locator("#reply-and-bounce")).to_have_text(
        "Replies go to support@example.com; bounces go to bounces@example.com "
        "(the envelope sender)."
    )
    expect(page.locator("#id_reply_to")).to_have_value("support@example.com")
    expect(page.locator("#history")).to_contain_text(
        "Reply-To address: (blank) → support@example.com"
    )
    expect(page.locator("#history")).to_contain_text(
        "Bounce address: (blank) → bounces@example.com"
    )
    snapshot(page, "smtp-reply-to-saved")
