"""Every console page at a phone's width and on a wide screen: the page itself never scrolls
sideways, the top bar keeps its links and Sign out inside it, and nothing sticks out of the
window except inside a box that scrolls on its own (a wide table). Screenshots of each page at
390 px and 1366 px go to var/browser/ for a person to look at."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.mail import EmailMessage, get_connection
from playwright.sync_api import expect

import notifications
from gatewaymgr import invitations
from gatewaymgr.addresses import Invitee
from gatewaymgr.models import Invitation
from notifications.models import ApiToken, Integration, OutboundEmail
from notifications.tokens import create as create_token
from tests.browser.conftest import sign_in, snapshot
from tests.smtpservers import require_test_host, self_signed, smtp_server

pytestmark = pytest.mark.browser

WIDTHS = (360, 390, 1366)
SCREENSHOTS = (390, 1366)

# Elements that stick out of the window (or of the top bar) and are not inside a box that
# scrolls or clips on its own. Returns a short description of each.
OVERFLOWING = """
() => {
  const width = document.documentElement.clientWidth;
  const topbar = document.querySelector('.topbar');
  const bar = topbar ? topbar.getBoundingClientRect() : null;
  const describe = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
      + (typeof el.className === 'string' && el.className
         ? '.' + el.className.trim().split(/\\s+/).join('.') : '')
      + ' "' + (el.textContent || '').trim().slice(0, 40) + '"';
  const inScrollBox = (el) => {
    for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
      const overflow = getComputedStyle(p).overflowX;
      if (overflow === 'auto' || overflow === 'scroll' || overflow === 'hidden') return true;
    }
    return false;
  };
  const found = [];
  for (const el of document.body.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.position === 'absolute' && r.bottom <= 0) continue;
    if (!inScrollBox(el) && (r.right > width + 0.5 || r.left < -0.5)) found.push(describe(el));
    if (bar && el.closest('.topbar') && el !== topbar
        && (r.bottom > bar.bottom + 0.5 || r.right > bar.right + 0.5)) {
      found.push('outside the top bar: ' + describe(el));
    }
  }
  return found;
}
"""

SCROLLS_SIDEWAYS = "document.documentElement.scrollWidth > document.documentElement.clientWidth"

# The same, in a frame's own document (which has no top bar).
OVERFLOWING_FRAME = OVERFLOWING


def seed() -> dict[str, str]:
    """Realistic content with long words: subjects, addresses, reasons, names."""
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    long_address = "platform-operations-oncall-rotation@subsidiary.internal.example.com"
    get_connection("notifications.backends.OutboxBackend").send_messages(
        [
            EmailMessage(
                f"Your API key for the payments-gateway-production-eu-west-1 cluster {i}",
                "Body",
                None,
                [long_address, f"someone.with.a.long.name.{i}@example.com"],
            )
            for i in range(12)
        ]
    )
    email = OutboundEmail.objects.first()
    OutboundEmail.objects.filter(pk=email.pk).update(
        last_error="451 4.7.1 Greylisted, please try again in 300 seconds "
        "(https://postmaster.example.com/greylisting-explained-at-length)"
    )
    invitations.invite(
        [Invitee("new.colleague.with.a.long.name@subsidiary.internal.example.com", "New One")]
        + [Invitee(f"person{i}@example.com") for i in range(5)]
    )
    integration = Integration.objects.create(
        name="Platform operations on-call rotation",
        recipients=[long_address, "ops@example.com", "security@example.com"],
        all_events=True,
        subject_prefix="[Gateway production]",
    )
    event = notifications.trigger("api.retired", {"api": "legacy-payments-v1-internal-do-not-use"})
    create_token("deployment pipeline for the payments cluster", None, "nonce-1")
    return {
        "home": "/",
        "smtp": "/settings/smtp/",
        "outbox": "/outbox/",
        "outbox-detail": f"/outbox/{email.pk}/",
        "users": "/users/",
        "integrations": "/integrations/",
        "integration": f"/integrations/{integration.pk}/",
        "integration-new": "/integrations/new/",
        "tokens": "/integrations/tokens/",
        "events": "/events/",
        "event": f"/events/{event.pk}/",
    }


def test_no_console_page_overflows_from_360_px_to_a_wide_screen(page):
    pages = seed()
    assert ApiToken.objects.count() == 1
    page.goto("/login/")
    sign_in(page, "root", "correct horse battery")
    page.wait_for_url("**/")
    problems = {}
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 800})
        for name, path in pages.items():
            page.goto(path)
            found = page.evaluate(OVERFLOWING)
            scroll = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            if scroll[0] > scroll[1]:
                found.insert(0, f"the page scrolls sideways: {scroll[0]} > {scroll[1]} px")
            if found:
                problems[f"{name} at {width} px"] = found[:5]
            if width in SCREENSHOTS:
                snapshot(page, f"console-{name}-{width}")
    assert problems == {}


def test_the_sign_in_page_fits_a_phone(page):
    page.set_viewport_size({"width": 360, "height": 700})
    page.goto("/login/")
    assert page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    snapshot(page, "console-sign-in-360")


def test_the_test_result_trust_and_confirmation_pages_fit_a_phone(page, workers):
    """The SMTP test result (its frame and its own page), "Trust this certificate?", a
    confirmation page, and the pages an invited person sees, at 360 and 390 px."""
    require_test_host()
    workers()  # the test e-mail is sent by a worker
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    invitations.invite([Invitee("bob@example.com")])
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto("/login/")
    sign_in(page, "root", "correct horse battery")
    page.wait_for_url("**/")
    with smtp_server(mode="starttls", certs=self_signed()) as server:
        page.goto("/settings/smtp/")
        page.fill("#id_sender_email", "gateway-notifications@subsidiary.internal.example.com")
        page.fill("#id_host", server.host)
        page.fill("#id_port", str(server.port))
        page.click("button:has-text('Save settings')")
        page.click("button:has-text('Send test e-mail')")
        frame = page.frame_locator("#test-result")
        expect(frame.locator("#diagnosis table.transcript")).to_be_visible()
        result = page.locator("text=Open the result on its own page").get_attribute("href")
        frame.locator("text=Trust this certificate…").click()
        expect(page.locator("h1")).to_have_text("Trust this certificate?")
    invitation = Invitation.objects.get()
    pages = {
        "smtp-tested": "/settings/smtp/",
        "test-result": result,
        "trust": "/settings/smtp/trust/",
        "confirm-revoke": f"/users/invitations/{invitation.pk}/revoke/",
        "not-found": "/no-such-page/",
    }
    problems = {}
    for width in (360, 390):
        page.set_viewport_size({"width": width, "height": 800})
        for name, path in pages.items():
            page.goto(path)
            found = page.evaluate(OVERFLOWING)
            if page.evaluate(SCROLLS_SIDEWAYS):
                found.insert(0, "the page scrolls sideways")
            for frame in page.frames[1:]:  # the test result inside the SMTP page
                found += [f"in its frame: {f}" for f in frame.evaluate(OVERFLOWING_FRAME)]
            if found:
                problems[f"{name} at {width} px"] = found[:5]
            if width == 390:
                snapshot(page, f"console-{name}-390")
    assert problems == {}


def test_on_a_wide_screen_no_list_hides_its_row_actions_in_a_scroll_box(page):
    seed()
    page.goto("/login/")
    sign_in(page, "root", "correct horse battery")
    page.wait_for_url("**/")
    page.set_viewport_size({"width": 1366, "height": 800})
    scrolled = {}
    for path in ("/users/", "/outbox/", "/integrations/", "/integrations/tokens/", "/events/"):
        page.goto(path)
        boxes = page.eval_on_selector_all(
            ".table-scroll", "els => els.map(e => [e.scrollWidth, e.clientWidth])"
        )
        if any(scroll > client for scroll, client in boxes):
            scrolled[path] = boxes
    assert scrolled == {}
    revoke = page.goto("/users/") and page.get_by_role("link", name="Revoke").first
    assert revoke.bounding_box()["x"] + revoke.bounding_box()["width"] <= 1366


def test_on_a_phone_the_long_lists_are_stacked_rows_with_their_actions_in_view(page):
    seed()
    page.goto("/login/")
    sign_in(page, "root", "correct horse battery")
    page.wait_for_url("**/")
    page.set_viewport_size({"width": 390, "height": 844})
    for path in ("/outbox/", "/users/", "/events/", "/integrations/tokens/"):
        page.goto(path)
        boxes = page.eval_on_selector_all(
            ".table-scroll", "els => els.map(e => [e.scrollWidth, e.clientWidth])"
        )
        assert all(scroll <= client for scroll, client in boxes[:1]), (path, boxes)
    page.goto("/users/")
    row = page.locator("#invitations tbody tr").first
    revoke = row.get_by_role("link", name="Revoke")
    box = revoke.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    # Each value says which column it belongs to.
    assert row.locator("td[data-label='Expires']").is_visible()
