"""The Content-Security-Policy allows no inline script or style, and no console page needs any:
an administrator visits every page reachable from the console (and the sign-in, lockout, test
e-mail and 404 pages) in Chromium, which reports each blocked inline script or style."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

import notifications
from notifications.models import Integration
from tests.browser.conftest import sign_in, snapshot
from tests.smtpservers import require_test_host, self_signed, smtp_server

pytestmark = pytest.mark.browser

PAGE_LIMIT = 80
# Links that change something when followed, or lead out of the console's own pages.
SKIP = ("/logout/", "/delete/", "/static/", "/admin/logout/", "/admin/password_change/")


def csp_violations(page) -> list[str]:
    found: list[str] = []
    page.on(
        "console",
        lambda message: (
            found.append(f"{page.url}: {message.text}")
            if "Content Security Policy" in message.text
            else None
        ),
    )
    return found


def links(page) -> list[str]:
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    return [urljoin(page.url, href) for href in hrefs]


def template_key(link: str) -> str:
    """One visit per template: the query (filters, sorting, page numbers) and object ids in the
    path do not change which template renders."""
    return re.sub(r"/(\d+|[0-9a-f-]{36})/", "/*/", urlsplit(link).path)


def crawl(page, base: str) -> list[str]:
    """Every console page reachable by links from the start page, breadth first."""
    seen = {"/"}
    queue = [f"{base}/"]
    visited = []
    while queue and len(visited) < PAGE_LIMIT:
        url = queue.pop(0)
        page.goto(url)
        visited.append(urlsplit(url).path)
        for link in links(page):
            key = template_key(link)
            if link.startswith(base) and key not in seen and not any(s in key for s in SKIP):
                seen.add(key)
                queue.append(link)
    return visited


def test_no_page_runs_or_needs_inline_script_or_style(page, live_server, workers):
    require_test_host()
    workers()
    violations = csp_violations(page)
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    Integration.objects.create(name="Ops", recipients=["ops@example.com"], all_events=True)
    notifications.trigger("api.retired", {"api": "legacy"})

    # The lockout page, then the sign-in page with a wrong password and the right one.
    for _ in range(5):
        page.goto("/login/")
        sign_in(page, "mallory", "guess")
    expect(page.locator(".errorbox")).to_contain_text("Too many failed sign-ins")
    snapshot(page, "sign-in-locked-out")
    page.goto("/login/")
    sign_in(page, "root", "wrong")
    expect(page.locator(".errorbox")).to_be_visible()
    sign_in(page, "root", "correct horse battery")
    expect(page.locator(".who")).to_have_text("root")

    # A test e-mail with a transcript, in its same-origin frame.
    with smtp_server(mode="starttls", certs=self_signed()) as server:
        page.goto("/settings/smtp/")
        page.fill("#id_sender_email", "gateway@example.com")
        page.fill("#id_host", server.host)
        page.fill("#id_port", str(server.port))
        page.click("button:has-text('Save settings')")
        page.click("button:has-text('Send test e-mail')")
        diagnosis = page.frame_locator("#test-result").locator("#diagnosis")
        expect(diagnosis.locator("table.transcript")).to_be_visible()
        page.frame_locator("#test-result").locator("text=Trust this certificate…").click()
        expect(page.locator("h1")).to_have_text("Trust this certificate?")

    visited = crawl(page, live_server.url)
    page.goto("/no-such-page/")
    page.goto("/invite/not-a-real-token/")

    assert {"/", "/settings/smtp/", "/outbox/", "/users/", "/integrations/", "/events/"} <= set(
        visited
    )
    assert any(path.startswith("/admin/") for path in visited)
    assert violations == []
