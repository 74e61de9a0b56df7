"""What an administrator meets on the console's pages: links only to pages they may open, a
read-only page that says so first, a page of its own to confirm each revoke, cancel and delete,
focus on the error summary after a failed submit, and a skip link."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

import notifications
from gatewaymgr import invitations
from gatewaymgr.addresses import Invitee
from gatewaymgr.models import Invitation
from notifications.models import ApiToken, Dispatch, Event, Integration, OutboundEmail, Status
from notifications.tokens import create as create_token
from notifications.triggering import send_test
from tests.browser.conftest import sign_in, snapshot
from tests.conftest import make_user
from tests.outbox import queue

pytestmark = pytest.mark.browser

PASSWORD = "correct horse battery"


def as_user(page, username: str, *perms: str) -> User:
    user = make_user(username, *perms)
    user.set_password(PASSWORD)
    user.save()
    page.goto("/login/")
    sign_in(page, username, PASSWORD)
    page.wait_for_url("**/")
    return user


def as_admin(page) -> User:
    user = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    page.goto("/login/")
    sign_in(page, "root", PASSWORD)
    page.wait_for_url("**/")
    return user


def forbidden_links(page, base: str) -> dict[str, str]:
    """Every link on every console page this user can reach, each followed: those that end in
    403, with the page that showed them. Frames count: their links show on the page too."""
    seen, queue_, found = set(), [f"{base}/"], {}
    while queue_:
        url = queue_.pop(0)
        page.goto(url)
        hrefs = []
        for frame in page.frames:
            hrefs += [
                urljoin(frame.url, href)
                for href in frame.eval_on_selector_all(
                    "a[href]", "els => els.map(e => e.getAttribute('href'))"
                )
            ]
        for link in hrefs:
            path = urlsplit(link).path
            outside = not link.startswith(base) or path.startswith(("/admin/", "/static/"))
            if outside or path in seen:
                continue
            seen.add(path)
            status = page.request.get(link, max_redirects=0).status
            if status == 403:
                found[path] = urlsplit(url).path
            elif status == 200:
                queue_.append(link)
    return found


@pytest.mark.parametrize(
    "perms",
    [
        ("gatewaymgr.view_invitation",),
        ("gatewaymgr.view_invitation", "gatewaymgr.add_invitation"),
        ("notifications.view_integration", "notifications.change_integration"),
        ("notifications.view_event",),
        ("notifications.view_outboundemail",),
    ],
    ids=["view-invitations", "invite", "integrations", "events", "outbox"],
)
def test_no_link_leads_to_a_page_the_user_may_not_open(page, live_server, perms):
    integration = Integration.objects.create(
        name="Ops", recipients=["ops@example.com"], all_events=True
    )
    send_test(integration)
    invitations.invite([Invitee("bob@example.com")])
    as_user(page, "limited", *perms)
    assert forbidden_links(page, live_server.url) == {}
    snapshot(page, f"links-{'-'.join(p.split('.')[1] for p in perms)}")


def test_the_read_only_smtp_page_says_so_at_the_top(page):
    as_user(page, "viewer", "smtpsettings.view_smtpsettings")
    page.goto("/settings/smtp/")
    notice = page.locator("#read-only")
    expect(notice).to_contain_text("You can view these settings but not change them")
    # Above the first field, where it is read before anything looks editable.
    assert notice.bounding_box()["y"] < page.locator("#id_sender_email").bounding_box()["y"]
    expect(page.locator("#id_sender_email")).to_be_disabled()
    snapshot(page, "smtp-read-only")


def test_a_read_only_integration_says_so_at_the_top(page):
    integration = Integration.objects.create(name="Ops", recipients=["ops@example.com"])
    as_user(page, "viewer", "notifications.view_integration")
    page.goto(f"/integrations/{integration.pk}/")
    notice = page.locator("#read-only")
    expect(notice).to_contain_text("You can view this integration but not change it.")
    assert notice.bounding_box()["y"] < page.locator("#id_name").bounding_box()["y"]


def test_revoking_an_invitation_asks_first_on_a_page_of_its_own(page):
    invitations.invite([Invitee("bob@example.com")])
    as_admin(page)
    page.goto("/users/")
    page.locator("tr[data-email='bob@example.com']").get_by_role("button", name="Revoke").or_(
        page.locator("tr[data-email='bob@example.com']").get_by_role("link", name="Revoke")
    ).click()
    expect(page.locator("h1")).to_have_text("Revoke the invitation for bob@example.com?")
    assert Invitation.objects.get().status == "pending"  # nothing happened yet
    snapshot(page, "confirm-revoke-invitation")
    page.get_by_role("link", name="Keep it").click()
    expect(page.locator("h1")).to_have_text("Users & invitations")
    assert Invitation.objects.get().status == "pending"

    page.locator("tr[data-email='bob@example.com']").get_by_role("link", name="Revoke").click()
    page.get_by_role("button", name="Revoke the invitation").click()
    expect(page.locator(".message.success")).to_contain_text(
        "Revoked the invitation for bob@example.com."
    )
    assert Invitation.objects.get().status == "revoked"


def test_cancelling_a_message_asks_first_and_its_recipients_then_say_cancelled(page):
    queue(1, recipients=("bob@example.com", "carol@example.com"), prefix="Quarterly report")
    email = OutboundEmail.objects.get()
    as_admin(page)
    page.goto(f"/outbox/{email.pk}/")
    page.get_by_role("button", name="Cancel").or_(page.get_by_role("link", name="Cancel")).click()
    expect(page.locator("h1")).to_have_text("Cancel “Quarterly report 0”?")
    email.refresh_from_db()
    assert email.status == Status.QUEUED  # nothing happened yet
    snapshot(page, "confirm-cancel-email")
    page.get_by_role("button", name="Cancel this e-mail").click()
    expect(page.locator(".message.success")).to_contain_text("Cancelled: it will not be sent.")
    email.refresh_from_db()
    assert email.status == Status.CANCELLED
    statuses = page.locator("#recipients .badge")
    expect(statuses).to_have_count(2)
    expect(statuses).to_have_text(["not sent", "not sent"])
    expect(page.locator("#recipients")).not_to_contain_text("pending")
    snapshot(page, "cancelled-email")


def test_an_integration_can_be_deleted_and_its_past_events_keep_what_they_sent(page):
    integration = Integration.objects.create(
        name="Platform team", recipients=["ops@example.com"], all_events=True
    )
    event = notifications.trigger("api.retired", {"api": "legacy"})
    as_admin(page)
    page.goto(f"/integrations/{integration.pk}/")
    page.get_by_role("link", name="Delete integration").click()
    expect(page.locator("h1")).to_have_text("Delete the integration Platform team?")
    assert Integration.objects.exists()
    snapshot(page, "confirm-delete-integration")
    page.get_by_role("button", name="Delete the integration").click()
    expect(page.locator(".message.success")).to_contain_text("Integration Platform team deleted")
    expect(page.locator("#integrations")).to_contain_text("No integrations yet.")
    assert not Integration.objects.exists()

    page.goto(f"/events/{event.pk}/")
    row = page.locator("#dispatches tbody tr")
    expect(row).to_contain_text("Platform team (deleted)")
    expect(row).to_contain_text("API legacy retired")  # the e-mail it sent, its subject
    dispatch = Dispatch.objects.get(event=event)
    assert dispatch.email is not None and dispatch.email.recipient_list == "ops@example.com"
    assert Event.objects.filter(pk=event.pk).exists()


def test_after_a_failed_submit_focus_is_on_an_error_summary_linking_to_each_field(page):
    as_admin(page)
    page.goto("/integrations/new/")
    page.fill("#id_recipients", "not-an-address")
    page.click("button:has-text('Create integration')")
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("Nothing was saved")
    links = summary.locator("a")
    hrefs = links.evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert "#id_name" in hrefs and "#id_recipients" in hrefs
    summary.get_by_role("link", name="Recipients").click()
    expect(page.locator("#id_recipients")).to_be_focused()
    snapshot(page, "error-summary-integration")

    page.goto("/users/")
    page.fill("#id_valid_days", "0")
    page.fill("#id_addresses", "bob@example.com")
    page.click("button:has-text('Send invitations')")
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("Nobody was invited.")
    summary.get_by_role("link", name="Link valid for").click()
    expect(page.locator("#id_valid_days")).to_be_focused()

    page.goto("/settings/smtp/")
    page.fill("#id_port", "99999")
    page.click("button:has-text('Save settings')")
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    summary.get_by_role("link", name="Port").click()
    expect(page.locator("#id_port")).to_be_focused()


def test_a_skip_link_is_the_first_stop_and_leads_to_the_content(page):
    as_admin(page)
    page.goto("/outbox/")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_visible()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()


def test_revoking_an_api_token_asks_first(page):
    create_token("deploy pipeline", None, "nonce-1")
    as_admin(page)
    page.goto("/integrations/tokens/")
    page.locator("#tokens").get_by_role("link", name="Revoke").or_(
        page.locator("#tokens").get_by_role("button", name="Revoke")
    ).click()
    expect(page.locator("h1")).to_have_text("Revoke the API token deploy pipeline?")
    assert ApiToken.objects.get().active  # nothing happened yet
    page.get_by_role("button", name="Revoke the token").click()
    expect(page.locator(".message.success")).to_contain_text("requests with it now get 401")
    assert not ApiToken.objects.get().active
