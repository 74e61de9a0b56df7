"""A paste of more addresses than a request invites (issue 14): the page answers at once, a
worker process invites them in the background, and the Users page shows the progress, then the
result with its problems; the invitation list pages on by key."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from gatewaymgr import invitations
from gatewaymgr.models import Invitation
from tests.browser.conftest import sign_in, snapshot
from tests.workers import wait_until

pytestmark = pytest.mark.browser


def test_a_paste_of_1200_addresses_is_invited_in_the_background_with_progress(page, workers):
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    User.objects.create_user("carol", "carol@example.com")  # has an account: a problem
    count = invitations.INLINE_MAX + 200
    box = "\n".join(
        [*(f"person{n}@example.com" for n in range(count - 1)), "Carol <carol@example.com>"]
    )
    page.goto("/users/")
    sign_in(page, "root", "correct horse battery")
    page.fill("#id_addresses", box)
    page.click("button:has-text('Send invitations')")
    expect(page.locator(".message.success")).to_contain_text(
        f"Inviting {count:,} addresses in the background"
    )
    expect(page.locator(".invite-batch")).to_contain_text(f"of {count:,} invited")
    snapshot(page, "bulk-invite-submitted")

    workers()
    wait_until(lambda: not invitations.unfinished_batches(), timeout=60, what="the batch")
    page.reload()
    batch = page.locator(".invite-batch")
    expect(batch).to_contain_text(
        f"Invited in the background: {count - 1:,} of {count:,} invited, 1 problem"
    )
    expect(batch).to_contain_text("carol@example.com already has an account (carol)")
    assert Invitation.objects.count() == count - 1

    rows = page.locator("#invitations tbody tr")
    expect(rows).to_have_count(50)
    first = rows.first.get_attribute("data-email")
    page.click("a:has-text('Older →')")
    expect(rows).to_have_count(50)
    assert rows.first.get_attribute("data-email") != first
    expect(page.locator("a:has-text('« Newest')")).to_be_visible()
    snapshot(page, "bulk-invite-done")
