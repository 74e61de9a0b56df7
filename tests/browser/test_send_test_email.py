"""An administrator sends a test e-mail, meets a self-signed certificate, trusts it after
seeing its fingerprint, and the next test is delivered with verification still on."""

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from smtpsettings import store
from smtpsettings.certificates import parse_pem_bundle
from tests.browser.conftest import sign_in, snapshot
from tests.smtpservers import require_test_host, self_signed, smtp_server

pytestmark = pytest.mark.browser


def test_test_email_and_trust_this_certificate(page, workers):
    require_test_host()
    workers()  # the test e-mail is sent by a worker, never by the web request
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    certs = self_signed()
    fingerprint = parse_pem_bundle(certs.pem)[0].sha256
    with smtp_server(mode="starttls", certs=certs) as server:
        page.goto("/settings/smtp/")
        sign_in(page, "root", "correct horse battery")
        page.fill("#id_sender_email", "gateway@example.com")
        page.fill("#id_host", server.host)
        page.fill("#id_port", str(server.port))
        page.click("button:has-text('Save settings')")
        expect(page.locator(".message.success")).to_contain_text("SMTP settings saved.")
        expect(page.locator("#id_test_to")).to_have_value("root@example.com")

        page.click("button:has-text('Send test e-mail')")
        diagnosis = page.frame_locator("#test-result").locator("#diagnosis")
        expect(diagnosis.locator(".errorbox")).to_contain_text(
            "not signed by an authority this machine trusts"
        )
        expect(diagnosis.locator("tr.failed th")).to_have_text("STARTTLS")
        expect(diagnosis).to_contain_text(fingerprint)
        snapshot(page, "test-email-untrusted")

        page.frame_locator("#test-result").locator("text=Trust this certificate…").click()
        expect(page.locator("h1")).to_have_text("Trust this certificate?")
        expect(page.locator(".fingerprint.big")).to_have_text(fingerprint)
        snapshot(page, "trust-confirmation")
        page.click("button:has-text('Trust this certificate')")
        expect(page.locator(".message.success")).to_contain_text("is now trusted")

        page.click("button:has-text('Send test e-mail')")
        result = page.frame_locator("#test-result").locator("#diagnosis")
        expect(result.locator(".okbox")).to_contain_text(
            "Delivered: the server accepted the test e-mail for root@example.com"
        )
        expect(result).to_contain_text("TLSv1")
        snapshot(page, "test-email-delivered")
    assert [m.rcpt_tos for m in server.messages] == [["root@example.com"]]
    assert store.load().options == {}  # verify_peer was never turned off
    assert (
        "accepts only the stored trusted certificate" in store.load().connection_plan().describe()
    )
