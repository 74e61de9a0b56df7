"""An administrator signs in, fills in Settings -> SMTP, saves, and reads what the page says."""

import pytest
import trustme
from django.contrib.auth.models import User
from playwright.sync_api import expect

from smtpsettings import store
from tests.browser.conftest import sign_in, snapshot

pytestmark = pytest.mark.browser


def test_administrator_saves_the_smtp_settings(page):
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    page.goto("/settings/smtp/")
    expect(page).to_have_url("/login/?next=/settings/smtp/")
    sign_in(page, "root", "correct horse battery")
    expect(page.locator("h1")).to_have_text("SMTP settings")
    expect(page.locator("nav a[aria-current=page]")).to_have_text("SMTP")

    ca = trustme.CA()
    page.fill("#id_sender_email", "gateway@example.com")
    page.fill("#id_sender_name", "Gateway Manager")
    page.fill("#id_host", "Mail.Bücher.example")
    page.fill("#id_port", "587")
    page.check("input[name=encryption][value=auto]")
    page.fill("#id_username", "alice")
    page.fill("#id_password", "browser-secret-42")
    page.fill("#id_options", '{"timeout": 10, "local_domain": "gw.example.com"}')
    page.fill("#id_trusted_certificate", ca.cert_pem.bytes().decode())
    page.click("button:has-text('Save settings')")

    expect(page.locator(".message.success")).to_contain_text("SMTP settings saved.")
    expect(page.locator("#plan .plan-sentence")).to_have_text(
        "Connects to mail.xn--bcher-kva.example:587, upgrades with STARTTLS (required), "
        "verifies the server certificate against the system's CAs and the stored trusted "
        "certificate, signs in as alice."
    )
    expect(page.locator("#id_host")).to_have_value("mail.xn--bcher-kva.example")
    expect(page.locator("#id_password")).to_have_value("")
    expect(page.locator("#password-state")).to_contain_text("A password is stored.")
    expect(page.locator("#trusted-certificates")).to_contain_text("Testing CA")
    expect(page.locator("#history")).to_contain_text("root · web page")
    expect(page.locator("#history")).to_contain_text("Password: not set → set")
    assert "browser-secret-42" not in page.content()
    assert store.load().reveal_password() == "browser-secret-42"
    snapshot(page, "smtp-settings-saved")

    # A mistake is reported at its field, and nothing of that save is kept.
    page.fill("#id_port", "70000")
    page.fill("#id_options", '{"verfy_peer": false}')
    page.fill("#id_sender_name", "Should not be saved")
    page.click("button:has-text('Save settings')")
    expect(page.locator(".errorbox").first).to_contain_text("Nothing was saved")
    expect(page.locator("#field-port .errorlist")).to_contain_text("Enter a port from 1 to 65535")
    expect(page.locator("#field-options .errorlist")).to_contain_text(
        'Unknown option "verfy_peer". Did you mean "verify_peer"?'
    )
    assert store.load().sender_name == "Gateway Manager"
    snapshot(page, "smtp-settings-errors")

    # Signing out ends the session.
    page.click("button:has-text('Sign out')")
    page.goto("/settings/smtp/")
    expect(page).to_have_url("/login/?next=/settings/smtp/")
