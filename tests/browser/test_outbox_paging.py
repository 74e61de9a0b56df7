"""An administrator pages through a long Outbox on a phone: Older, Oldest, Newer, Newest, and a
search that says what it matches."""

import re

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from notifications.models import OutboundEmail
from tests.browser.conftest import sign_in, snapshot
from tests.outbox import point_settings_at, queue

pytestmark = pytest.mark.browser
SIDEWAYS = "document.documentElement.scrollWidth > document.documentElement.clientWidth"


def test_page_through_the_outbox_on_a_phone(page):
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    point_settings_at("smtp.gatewaymgr.test", 2525)
    queue(70, prefix="Release notes")
    queue(50, recipients=("carol@ops.example",), prefix="On call")
    newest = OutboundEmail.objects.first()
    oldest = OutboundEmail.objects.last()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/outbox/")
    sign_in(page, "root", "correct horse battery")
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#q_help")).to_contain_text("a domain (@example.com)")
    assert not page.evaluate(SIDEWAYS)
    expect(rows.first).to_contain_text(newest.subject)

    page.click("a:has-text('Older →')")
    expect(rows).to_have_count(50)
    expect(page.locator(".pager")).to_contain_text("« Newest")
    page.click("a:has-text('Oldest »')")
    expect(rows.last).to_contain_text(oldest.subject)
    expect(page.locator(".pager a:has-text('Older')")).to_have_count(0)
    assert not page.evaluate(SIDEWAYS)
    snapshot(page, "outbox-oldest-390")
    page.click("a:has-text('← Newer')")
    page.click("a:has-text('« Newest')")
    expect(rows.first).to_contain_text(newest.subject)

    page.fill("#id_q", "@ops.example")
    page.click("button:has-text('Filter')")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text("carol@ops.example")
    assert re.search(r"q=%40ops\.example", page.url)
    expect(page.locator(".pager a:has-text('Older')")).to_have_count(0)  # exactly 50 of them
