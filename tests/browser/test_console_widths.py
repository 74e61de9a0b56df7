"""Every console page at a phone's width and on a wide screen: the page itself never scrolls
sideways, the top bar keeps its links and Sign out inside it, and nothing sticks out of the
window except inside a box that scrolls on its own (a wide table). Screenshots of each page at
390 px and 1366 px go to var/browser/ for a person to look at."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.mail import EmailMessage, get_connection

import notifications
from gatewaymgr import invitations
from gatewaymgr.addresses import Invitee
from notifications.models import ApiToken, Integration, OutboundEmail
from notifications.tokens import create as create_token
from tests.browser.conftest import sign_in, snapshot

pytestmark = pytest.mark.browser

WIDTHS = (360, 390, 1366)
SCREENSHOTS = (390, 1366)

# Elements that stick out of the window (or of the top bar) and are not inside a box that
# scrolls or clips on its own. Returns a short description of each.
OVERFLOWING = """
() => {
  const width = document.documentElement.clientWidth;
  const bar = document.querySelector('.topbar').getBoundingClientRect();
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
    if (el.closest('.topbar') && el !== document.querySelector('.topbar')
        && (r.bottom > bar.bottom + 0.5 || r.right > bar.right + 0.5)) {
      found.push('outside the top bar: ' + describe(el));
    }
  }
  return found;
}
"""


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
