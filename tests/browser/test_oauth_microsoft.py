"""Issue 11 in the browser: an administrator sets up Microsoft 365 with OAuth 2.0, from choosing
the provider to a passing test e-mail, against a real HTTPS token endpoint and an SMTP server
that accepts only live XOAUTH2 tokens from it."""

import pytest
import trustme
from django.contrib.auth.models import User
from playwright.sync_api import expect

from smtpsettings import store
from tests.browser.conftest import sign_in, snapshot
from tests.oauth_server import XOAuth2Recorder, ca_bundle, token_endpoint
from tests.smtpservers import require_test_host, smtp_server

pytestmark = pytest.mark.browser
MAILBOX = "alerts@example.com"


@pytest.fixture
def endpoint(tmp_path, monkeypatch, settings):
    # The worker that runs the test e-mail inherits these, as a deployment would set them.
    ca = trustme.CA()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_bundle(tmp_path / "ca", ca)))
    with token_endpoint(ca) as running:
        settings.OAUTH_MICROSOFT_AUTHORITY = running.base
        monkeypatch.setenv("OAUTH_MICROSOFT_AUTHORITY", running.base)
        yield running


def test_microsoft_365_from_choosing_the_provider_to_a_passing_test(page, workers, endpoint):
    require_test_host()
    workers()
    User.objects.create_superuser("root", "root@example.com", "correct horse battery")
    with smtp_server(mode="starttls", recorder=XOAuth2Recorder(endpoint=endpoint)) as server:
        page.goto("/settings/smtp/")
        sign_in(page, "root", "correct horse battery")
        page.fill("#id_sender_email", MAILBOX)
        page.fill("#id_host", server.host)
        page.fill("#id_port", str(server.port))
        page.check("input[name=auth_method][value=oauth2]")
        page.fill("#id_username", MAILBOX)
        page.check("input[name=oauth_provider][value=microsoft]")
        page.fill("#id_oauth_tenant", endpoint.tenant)
        page.fill("#id_oauth_client_id", endpoint.client_id)
        page.fill("#id_oauth_client_secret", endpoint.client_secret)
        page.fill("#id_options", '{"timeout": 5}')
        page.fill("#id_trusted_certificate", server.certificates.ca_pem)
        page.click("button:has-text('Send test e-mail')")
        result = page.frame_locator("#test-result").locator("#diagnosis")
        expect(result.locator(".okbox")).to_contain_text("Delivered", timeout=20_000)
        expect(result).to_contain_text("XOAUTH2 as alerts@example.com")
        expect(result.locator("th", has_text="Token")).to_be_visible()
        snapshot(page, "oauth-microsoft-test-delivered")
        transcript = page.frame_locator("#test-result").locator("body").inner_text()

        page.fill("#id_oauth_client_secret", endpoint.client_secret)
        page.click("button:has-text('Save settings')")
        expect(page.locator(".plan-sentence")).to_contain_text(
            f"signs in as {MAILBOX} with an OAuth 2.0 token from Microsoft 365 "
            f"(tenant {endpoint.tenant})"
        )
        expect(page.locator("#oauth-credential-state")).to_contain_text("Stored: a client secret")
        snapshot(page, "oauth-microsoft-saved")
        html = page.content()
    for secret in [endpoint.client_secret, *endpoint.tokens]:
        assert secret not in html and secret not in transcript
    assert server.recorder.logins == [f"XOAUTH2 {MAILBOX}"]
    assert store.load().secret_state("oauth_credential_token").value == "set"
