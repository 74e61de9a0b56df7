"""Issue 10, holes 3 and 4 in the browser: a password typed for a passing test is what Save
stores, and trusting a certificate keeps the unsaved values it was tested with."""

import pytest
from django.contrib.auth.models import User
from django.core.mail import EmailMessage
from playwright.sync_api import expect

from smtpsettings import store
from smtpsettings.backends import StoredSettingsBackend
from smtpsettings.models import PasswordState
from tests.browser.conftest import sign_in, snapshot
from tests.smtpservers import (
    PASSWORD,
    USERNAME,
    certificates,
    require_test_host,
    self_signed,
    smtp_server,
)

pytestmark = pytest.mark.browser


def fill(page, server, **fields) -> None:
    page.fill("#id_sender_email", "gateway@example.com")
    page.fill("#id_host", server.host)
    page.fill("#id_port", str(server.port))
    for name, value in fields.items():
        page.fill(f"#id_{name}", value)


def send_one() -> None:
    StoredSettingsBackend().send_messages(
        [EmailMessage("Hello", "Body", "gateway@example.com", ["bob@example.com"])]
    )


@pytest.fixture
def admin(page, workers):
    require_test_host()
    workers()
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    page.goto("/settings/smtp/")
    sign_in(page, "root", "correct horse battery")
    return page


def test_password_typed_for_a_passing_test_is_saved(admin):
    page = admin
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        fill(page, server, username=USERNAME, password=PASSWORD, trusted_certificate=certs.ca_pem)
        page.click("button:has-text('Send test e-mail')")
        result = page.frame_locator("#test-result").locator("#diagnosis")
        expect(result.locator(".okbox")).to_contain_text("Delivered")
        expect(page.locator("#id_password")).to_have_value("")  # never rendered back
        expect(page.locator("#typed-password-held")).to_contain_text("Save stores it")
        assert PASSWORD not in page.content()
        page.click("button:has-text('Save settings')")
        expect(page.locator(".messages")).to_contain_text(
            "The password you typed for the test was saved"
        )
        expect(page.locator(".plan-sentence")).to_contain_text(f"signs in as {USERNAME}.")
        snapshot(page, "typed-password-saved")
        assert store.load().password_state is PasswordState.SET
        send_one()
    assert server.recorder.logins == [f"PLAIN {USERNAME}"] * 2


def test_trusting_a_certificate_keeps_the_unsaved_values_it_was_tested_with(admin):
    page = admin
    certs = self_signed()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        fill(page, server, sender_name="Gateway Ops", username=USERNAME, password=PASSWORD)
        page.click("button:has-text('Send test e-mail')")
        frame = page.frame_locator("#test-result")
        expect(frame.locator(".errorbox")).to_contain_text("not signed by an authority")
        frame.locator("text=Trust this certificate…").click()
        expect(page.locator("#trust-changes")).to_contain_text("Gateway Ops")
        expect(page.locator("#field-password")).to_contain_text("typed for the test is saved")
        snapshot(page, "trust-with-unsaved-values")
        page.click("button:has-text('Trust this certificate')")
        expect(page.locator(".messages")).to_contain_text("only this exact certificate")
        expect(page.locator("#id_sender_name")).to_have_value("Gateway Ops")
        page.click("button:has-text('Send test e-mail')")
        expect(page.frame_locator("#test-result").locator(".okbox")).to_contain_text("Delivered")
    record = store.load()
    assert (record.sender_name, record.port) == ("Gateway Ops", server.port)
    assert server.recorder.logins == [f"PLAIN {USERNAME}"]
