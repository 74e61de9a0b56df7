"""Issue 11 on Settings -> SMTP and `smtp_settings`: choosing OAuth 2.0, its provider and a
credential, which is stored sealed, shown only by its public facts and never rendered back."""

from __future__ import annotations

import io
import json

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command

from smtpsettings import store
from smtpsettings.models import PasswordState, SmtpSettingsChange

URL = "/settings/smtp/"
SECRET = "Mz8Q~very.secret-client.secret_value"
pytestmark = pytest.mark.django_db

BASE = {
    "sender_email": "alerts@contoso.com",
    "host": "",
    "port": "587",
    "encryption": "auto",
    "auth_method": "oauth2",
    "username": "alerts@contoso.com",
    "oauth_provider": "microsoft",
    "oauth_tenant": "contoso.onmicrosoft.com",
    "oauth_client_id": "11111111-2222-3333-4444-555555555555",
    "options": "",
    "trusted_certificate": "",
    "action": "save",
}


def certificate_with_key() -> tuple[str, str]:
    """(PEM of a certificate and its key, the key alone)."""
    leaf = trustme.CA().issue_cert("gateway-manager-app", key_type=trustme.KeyType.RSA)
    key = leaf.private_key_pem.bytes().decode()
    return leaf.cert_chain_pems[0].bytes().decode() + key, key


def service_account() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    document = {
        "type": "service_account",
        "project_id": "contoso-mail",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": key_pem,
        "client_email": "mailer@contoso-mail.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    return json.dumps(document), key_pem


def save(client, **changes):
    return client.post(URL, {**BASE, **changes}, follow=True)


def errors(response) -> str:
    form = response.context["form"]
    return json.dumps(form.errors)


def test_microsoft_with_a_client_secret_presets_the_server_and_keeps_the_secret_sealed(
    admin_client,
):
    response = save(admin_client, oauth_client_secret=SECRET, oauth_secret_expires="2027-03-01")
    page = response.content.decode()
    record = store.load()
    assert (record.host, record.port) == ("smtp.office365.com", 587)
    assert record.secret_state("oauth_credential_token") is PasswordState.SET
    assert record.reveal_secret("oauth_credential_token") == {
        "kind": "client_secret",
        "value": SECRET,
    }
    assert SECRET not in page and SECRET not in record.oauth_credential_token
    assert (
        "signs in as alerts@contoso.com with an OAuth 2.0 token from Microsoft 365 "
        "(tenant contoso.onmicrosoft.com)"
    ) in page
    assert "Stored: a client secret." in page
    assert "The client secret expires on 2027-03-01" in page
    history = json.dumps(SmtpSettingsChange.objects.get().changes)
    assert SECRET not in history and "OAuth 2.0 credential" in history


def test_microsoft_needs_tenant_client_id_mailbox_and_a_credential(admin_client):
    response = save(admin_client, oauth_tenant="", oauth_client_id="", username="")
    text = errors(response)
    assert "Enter the tenant ID or domain" in text
    assert "Enter the application (client) ID" in text
    assert "Enter the mailbox to send as" in text
    assert "Enter a client secret or a certificate with its private key" in text
    assert "Nothing was saved" in response.content.decode()
    assert store.load().host == ""


def test_microsoft_with_a_certificate_upload_shows_its_facts_never_its_key(admin_client):
    pem, key = certificate_with_key()
    upload = SimpleUploadedFile("app.pem", pem.encode(), content_type="application/x-pem-file")
    response = save(admin_client, oauth_certificate_file=upload)
    page = response.content.decode()
    info = store.load().oauth_credential_info
    assert info["kind"] == "certificate" and info["thumbprint"] in page
    assert "gateway-manager-app" in page or info["subject"] in page
    assert key.splitlines()[1] not in page


def test_an_ec_certificate_is_refused_at_its_field_as_microsoft_takes_only_rsa(admin_client):
    leaf = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert("gateway-manager-app")
    pem = leaf.cert_chain_pems[0].bytes().decode() + leaf.private_key_pem.bytes().decode()
    response = save(admin_client, oauth_certificate=pem)
    assert "only with RSA certificates" in " ".join(
        response.context["form"].errors["oauth_certificate"]
    )


def test_google_takes_a_service_account_key_and_shows_its_account(admin_client):
    document, key = service_account()
    response = save(
        admin_client,
        oauth_provider="google",
        oauth_tenant="",
        oauth_client_id="",
        username="alerts@contoso.com",
        oauth_service_account=document,
    )
    page = response.content.decode()
    record = store.load()
    assert (record.host, record.port) == ("smtp.gmail.com", 587)
    assert "mailer@contoso-mail.iam.gserviceaccount.com" in page
    assert "0123456789abcdef0123456789abcdef01234567" in page
    assert key.splitlines()[1] not in page
    assert "with an OAuth 2.0 token from Google Workspace" in page


def test_a_credential_the_provider_does_not_take_is_refused(admin_client):
    document, _ = service_account()
    response = save(admin_client, oauth_service_account=document)
    assert "Microsoft 365 takes a client secret or a certificate" in errors(response)
    assert store.load().oauth_credential_token == ""


def test_a_bad_service_account_key_is_an_error_at_its_field(admin_client):
    response = save(
        admin_client,
        oauth_provider="google",
        oauth_service_account='{"type": "service_account"}',
    )
    assert "lacks client_email" in " ".join(
        response.context["form"].errors["oauth_service_account"]
    )


def test_another_provider_needs_an_https_token_url(admin_client):
    response = save(
        admin_client,
        oauth_provider="other",
        host="mail.example.net",
        oauth_token_url="http://idp.example.net/token",
        oauth_refresh_token="rt-1",
    )
    assert "Enter an https:// URL" in errors(response)


def test_changing_the_tenant_drops_the_stored_credential_unless_entered_again(admin_client):
    save(admin_client, oauth_client_secret=SECRET)
    page = save(admin_client, host="smtp.office365.com", oauth_tenant="fabrikam.com").content
    assert store.load().oauth_credential_token == ""
    assert "The stored OAuth 2.0 credential was removed" in page.decode()


def test_the_command_line_sets_oauth_and_show_json_reveals_no_secret(admin_client, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(SECRET + "\n"))
    out = io.StringIO()
    call_command(
        "smtp_settings",
        "set",
        "--sender",
        "alerts@contoso.com",
        "--auth",
        "oauth2",
        "--user",
        "alerts@contoso.com",
        "--oauth-provider",
        "microsoft",
        "--oauth-tenant",
        "contoso.onmicrosoft.com",
        "--oauth-client-id",
        "11111111-2222-3333-4444-555555555555",
        "--oauth-client-secret-stdin",
        stdout=out,
    )
    assert "with an OAuth 2.0 token from Microsoft 365" in out.getvalue()
    assert SECRET not in out.getvalue()
    shown = io.StringIO()
    call_command("smtp_settings", "show", "--json", stdout=shown)
    report = json.loads(shown.getvalue())
    assert report["auth_method"] == "oauth2" and report["oauth_provider"] == "microsoft"
    assert report["oauth_credential"] == {"kind": "client_secret", "state": "set"}
    assert SECRET not in shown.getvalue()


def test_the_command_line_names_the_flag_of_a_bad_credential(admin_client, tmp_path):
    bad = tmp_path / "key.json"
    bad.write_text("not json")
    with pytest.raises(CommandError) as raised:
        call_command(
            "smtp_settings",
            "set",
            "--sender",
            "alerts@contoso.com",
            "--auth",
            "oauth2",
            "--user",
            "alerts@contoso.com",
            "--oauth-provider",
            "google",
            "--oauth-service-account",
            str(bad),
        )
    assert "--oauth-service-account:" in str(raised.value)
    assert "Nothing was saved" in str(raised.value)


def test_a_client_certificate_is_stored_with_its_key_sealed_and_can_be_removed(admin_client):
    pem, key = certificate_with_key()
    response = save(
        admin_client,
        auth_method="none",
        host="relay.example.net",
        username="",
        client_certificate_pem=pem,
    )
    page = response.content.decode()
    record = store.load()
    assert record.client_certificate.startswith("-----BEGIN CERTIFICATE-----")
    assert record.secret_state("client_key_token") is PasswordState.SET
    assert key.splitlines()[1] not in page and key.splitlines()[1] not in record.client_key_token
    assert "A client certificate is stored" in page
    save(
        admin_client,
        auth_method="none",
        host="relay.example.net",
        username="",
        clear_client_certificate="on",
    )
    record = store.load()
    assert (record.client_certificate, record.client_key_token) == ("", "")


def test_secret_fields_are_hidden_from_error_reports(admin_client):
    from django.views.debug import SafeExceptionReporterFilter

    from smtpsettings.forms import SECRET_FIELDS

    response = admin_client.post(URL, {**BASE, "oauth_client_secret": SECRET})
    request = response.wsgi_request
    cleaned = SafeExceptionReporterFilter().get_post_parameters(request)
    assert cleaned["oauth_client_secret"] != SECRET
    assert set(SECRET_FIELDS) <= set(request.sensitive_post_parameters)


def test_rotate_smtp_key_moves_every_stored_secret_and_shared_token(admin_client, settings):
    from smtpsettings import keyring
    from smtpsettings.models import OAuthAccessToken

    old = keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [old]
    pem, _ = certificate_with_key()
    save(admin_client, oauth_client_secret=SECRET, client_certificate_pem=pem)
    OAuthAccessToken.objects.create(key="k" * 64, token=keyring.encrypt("access-token-1"))
    new = keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [new, old]
    out = io.StringIO()
    call_command("rotate_smtp_key", stdout=out)
    settings.SMTP_ENCRYPTION_KEYS = [new]
    settings.SECRET_KEY_FALLBACKS = []
    record = store.load()
    assert record.reveal_secret("oauth_credential_token")["value"] == SECRET
    assert record.reveal_secret("client_key_token").startswith("-----BEGIN")
    assert keyring.decrypt(OAuthAccessToken.objects.get().token) == "access-token-1"
    assert "OAuth 2.0 credential" in out.getvalue() and SECRET not in out.getvalue()
