"""The whole invitation journey: an administrator invites, a worker delivers the e-mail to a
real SMTP server, the invitee follows the link from that message, joins and is signed in, and
the administrator sees the invitation accepted."""

import re
from email import message_from_bytes, policy

import pytest
from django.contrib.auth.models import Group, User
from playwright.sync_api import expect

from gatewaymgr.models import Invitation
from tests.browser.conftest import sign_in, snapshot
from tests.outbox import point_settings_at
from tests.smtpservers import require_test_host, smtp_server
from tests.workers import wait_until

pytestmark = pytest.mark.browser


def test_invite_deliver_accept_and_see_it_accepted(page, browser, live_server, workers, settings):
    require_test_host()
    settings.PUBLIC_URL = live_server.url
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    Group.objects.create(name="Operators")
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        workers()  # the e-mail goes out from a worker process, never from the web request

        # 1. The administrator invites an address, with a group.
        page.goto("/users/")
        sign_in(page, "root", "correct horse battery")
        page.fill("#id_addresses", "Bob Builder <bob@example.com>\nnot-an-address")
        page.check("label:has-text('Operators')")
        page.click("button:has-text('Send invitations')")
        expect(page.locator(".message.success")).to_contain_text("Invited 1: bob@example.com")
        expect(page.locator("#addresses_problems")).to_contain_text(
            "Line 2: “not-an-address” is not a valid e-mail address."
        )
        expect(page.locator("#id_addresses")).to_have_value("not-an-address")
        snapshot(page, "invitations-invited")

        # 2. The e-mail arrives at the SMTP server through the outbox and the worker.
        wait_until(lambda: len(server.messages) == 1, timeout=30, what="the invitation e-mail")
    (received,) = server.messages
    assert received.rcpt_tos == ["bob@example.com"]
    message = message_from_bytes(received.data, policy=policy.default)
    # 3. The link, taken from the message as received.
    text = message.get_body(("plain",)).get_content()
    link = re.search(rf"{re.escape(live_server.url)}/invite/[\w-]+/", text).group(0)

    # 4. The invitee, in a browser of their own, accepts and is signed in.
    invitee = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    invitee.set_default_timeout(10_000)
    invitee.goto(link)
    expect(invitee.locator("#id_email")).to_have_value("bob@example.com")
    expect(invitee.locator("#id_email")).to_be_disabled()
    expect(invitee.locator("#id_name")).to_have_value("Bob Builder")
    expect(invitee.locator("#id_username")).to_have_value("bob")
    invitee.fill("#id_password1", "password")
    invitee.fill("#id_password2", "password")
    invitee.click("button:has-text('Create my account')")
    expect(invitee.locator("#id_password1_error")).to_contain_text("too common")
    invitee.fill("#id_password1", "violet-harbour-71-kettle")
    invitee.fill("#id_password2", "violet-harbour-71-kettle")
    snapshot(invitee, "invitation-accept")
    invitee.click("button:has-text('Create my account')")
    expect(invitee.locator(".message.success")).to_contain_text("Welcome to Gateway Manager, bob")
    expect(invitee.locator(".who")).to_have_text("bob")
    snapshot(invitee, "invitation-joined")
    invitee.goto(link)  # the link works once
    expect(invitee.locator("h1")).to_have_text("This invitation was already used")
    invitee.context.close()

    # 5. The administrator sees the invitation accepted, and its e-mail delivered.
    page.goto("/users/")
    row = page.locator('tr[data-email="bob@example.com"]')
    expect(row.locator(".badge").first).to_have_text("Accepted")
    expect(row.locator(".delivery")).to_contain_text("Sent")
    expect(row).to_contain_text("Operators")
    snapshot(page, "invitations-accepted")
    bob = User.objects.get(username="bob")
    assert [g.name for g in bob.groups.all()] == ["Operators"]
    assert Invitation.objects.get().user == bob
