"""Issue 10 in a real browser: a user who may invite cannot give a group bigger than their own
permissions, even by adding its checkbox to the page, and the accept page's link (its token)
never leaves in a Referer."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import Group, Permission
from django.utils import timezone
from playwright.sync_api import expect

from gatewaymgr import invitations
from gatewaymgr.models import Invitation
from tests.browser.conftest import sign_in, snapshot
from tests.conftest import make_user

pytestmark = pytest.mark.browser


def test_an_inviter_cannot_give_a_group_with_more_than_their_permissions(page):
    everything = Group.objects.create(name="Everything")
    everything.permissions.set(Permission.objects.all())
    Group.objects.create(name="Newcomers")
    make_user("mallory", "gatewaymgr.view_invitation", "gatewaymgr.add_invitation")
    page.goto("/users/")
    sign_in(page, "mallory", "pw")
    expect(page.locator("#field-groups")).to_contain_text("Newcomers")
    expect(page.locator("#field-groups")).not_to_contain_text("Everything")

    # The attacker adds the checkbox herself, as the browser's developer tools allow.
    page.evaluate(
        """pk => {
            const box = document.createElement("input");
            Object.assign(box, {type: "checkbox", name: "groups", value: pk, checked: true});
            document.querySelector("#invite").append(box);
        }""",
        str(everything.pk),
    )
    page.fill("#id_addresses", "mallory@evil.example")
    page.click("button:has-text('Send invitations')")
    expect(page.locator("#field-groups .errorlist")).to_contain_text(
        "You cannot grant “Everything”: it gives permissions you do not hold yourself."
    )
    snapshot(page, "security-invite-bigger-group-refused")
    assert Invitation.objects.count() == 0


def test_the_accept_page_sends_no_referer_with_its_token(page, live_server):
    token, token_hash = invitations.new_token()
    Invitation.objects.create(
        email="bob@example.com",
        token_hash=token_hash,
        expires_at=timezone.now() + datetime.timedelta(days=1),
    )
    referers: list[str] = []
    page.on("request", lambda request: referers.append(request.headers.get("referer", "")))
    page.goto(f"/invite/{token}/")
    expect(page.locator("#id_email")).to_have_value("bob@example.com")
    page.fill("#id_name", "Bob")
    page.fill("#id_password1", "violet-harbour-71-kettle")
    page.fill("#id_password2", "violet-harbour-71-kettle")
    page.click("button:has-text('Create my account')")
    expect(page.locator(".message.success")).to_contain_text("Welcome to Gateway Manager, bob")
    # The page's style sheet, the form's POST, the page after joining and its style sheet.
    assert len(referers) >= 4
    assert not any(token in referer for referer in referers), referers
