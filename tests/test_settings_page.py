"""Settings -> SMTP in the console, through Django's test client."""

import re

import pytest
import trustme
from django.urls import reverse

from smtpsettings import keyring, store
from smtpsettings.models import PasswordState, SmtpSettings, SmtpSettingsChange
from tests.conftest import make_user

URL = "/settings/smtp/"
VALID = {
    "sender_email": "gateway@example.com",
    "sender_name": "Gateway Manager",
    "host": "smtp.example.com",
    "port": "587",
    "encryption": "auto",
    "username": "alice",
    "password": "",
    "options": "",
    "trusted_certificate": "",
}
pytestmark = pytest.mark.django_db


def post(client, **changes):
    return client.post(URL, {**VALID, **changes})


def field_errors(response, field: str) -> str:
    return " ".join(str(e) for e in response.context["form"].errors.get(field, []))


def test_url_name_and_navigation(admin_client):
    assert reverse("smtpsettings:page") == URL
    home = admin_client.get("/").content.decode()
    assert f'href="{URL}"' in home


def test_anonymous_visitor_is_sent_to_sign_in(client):
    response = client.get(URL)
    assert response.status_code == 302
    assert response.url == f"/login/?next={URL}"
    assert client.post(URL, VALID).status_code == 302
    assert not SmtpSettings.objects.filter(host="smtp.example.com").exists()


def test_signed_in_user_without_permission_gets_403(client):
    client.force_login(make_user("bob"))
    response = client.get(URL)
    assert response.status_code == 403
    assert "permission" in response.content.decode()


def test_viewer_sees_the_settings_but_cannot_save(client):
    client.force_login(make_user("carol", "smtpsettings.view_smtpsettings"))
    page = client.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert "Save settings" not in html
    assert re.search(r'<input[^>]*name="host"[^>]*disabled', html)
    assert post(client).status_code == 403
    assert store.load().host == ""


def test_editor_with_change_permission_saves(client):
    client.force_login(
        make_user("dave", "smtpsettings.view_smtpsettings", "smtpsettings.change_smtpsettings")
    )
    response = post(client, password="pw-1")
    assert response.status_code == 302
    saved = store.load()
    assert (saved.host, saved.port, saved.username) == ("smtp.example.com", 587, "alice")
    assert saved.updated_by.username == "dave"


def test_csrf_stays_on(admin_user):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(admin_user)
    assert csrf_client.post(URL, VALID).status_code == 403


def test_first_visit_creates_the_record_with_defaults(admin_client):
    assert not SmtpSettings.objects.exists()
    page = admin_client.get(URL)
    assert page.status_code == 200
    saved = SmtpSettings.objects.get()
    assert (saved.port, saved.encryption) == (587, "auto")
    assert "No SMTP server is configured yet" in page.content.decode()


def test_save_shows_the_plan_sentence_and_history(admin_client):
    response = post(admin_client, password="hunter2")
    assert response.status_code == 302
    page = admin_client.get(URL).content.decode()
    assert (
        "Connects to smtp.example.com:587, upgrades with STARTTLS (required), "
        "verifies the server certificate, signs in as alice."
    ) in page
    assert "SMTP settings saved." in page
    assert "Gateway Manager &lt;gateway@example.com&gt;" in page
    entry = SmtpSettingsChange.objects.get()
    assert entry.actor == "alice" and entry.source == "web page"
    labels = {change["label"] for change in entry.changes}
    assert {"Server", "User", "Sender e-mail address", "Password"} <= labels
    assert "hunter2" not in str(entry.changes)
    assert "Password</span>: not set → set" in page


def test_password_is_write_only(admin_client):
    post(admin_client, password="hunter2-very-secret")
    page = admin_client.get(URL).content.decode()
    assert "hunter2-very-secret" not in page
    assert "A password is stored." in page
    token = store.load().password_token
    assert token and "hunter2" not in token and token not in page
    assert store.load().reveal_password() == "hunter2-very-secret"


def test_blank_password_keeps_the_stored_one_and_checkbox_clears_it(admin_client):
    post(admin_client, password="first")
    post(admin_client, sender_name="Renamed")
    assert store.load().reveal_password() == "first"
    post(admin_client, clear_password="on")
    assert store.load().password_state is PasswordState.NOT_SET
    assert "No password is stored." in admin_client.get(URL).content.decode()


def test_password_and_clear_together_is_refused(admin_client):
    post(admin_client, password="first")
    response = post(admin_client, password="second", clear_password="on")
    assert "not both" in field_errors(response, "clear_password")
    assert store.load().reveal_password() == "first"


@pytest.mark.parametrize(
    "change", [{"host": "smtp2.example.com"}, {"port": "2525"}, {"username": "mallory"}]
)
def test_changing_server_drops_the_password_unless_entered_again(admin_client, change):
    post(admin_client, password="bound")
    response = post(admin_client, **change)
    assert response.status_code == 302
    assert store.load().password_state is PasswordState.NOT_SET
    page = admin_client.get(URL).content.decode()
    assert "The stored password was removed because the server, port or user changed" in page
    post(admin_client, password="bound")
    post(admin_client, **change, password="again")
    assert store.load().reveal_password() == "again"


def test_the_page_explains_the_password_binding_next_to_the_field(admin_client):
    page = admin_client.get(URL).content.decode()
    assert "removes the stored password unless you enter it again" in page


def test_international_server_name_is_stored_in_punycode(admin_client):
    post(admin_client, host="Mail.Bücher.example")
    assert store.load().host == "mail.xn--bcher-kva.example"


def test_each_field_carries_the_help_pages_text(admin_client):
    page = admin_client.get(URL).content.decode()
    for text in [
        "Most SMTP servers need an address that really exists",
        "Host name or IP address of your SMTP server",
        "The default for a secure connection is 587",
        # The help page's rule, made exact (issue 13: opportunistic STARTTLS there).
        "On port 25 and to localhost it uses STARTTLS when the server offers it",
        "If left blank, authentication is skipped",
        "It is stored encrypted",
        "{&quot;verify_peer&quot;: false}",
        "restart_threshold_sleep",
        "ping_threshold",
        "local_domain",
    ]:
        assert text in page, text


BAD_INPUT = [
    ("sender_email", "", "Enter the address mail is sent from"),
    ("sender_email", "not-an-address", "Enter a complete e-mail address"),
    ("sender_email", "a@example.com\r\nBcc: x@example.com", "Enter a complete e-mail address"),
    ("sender_name", "Evil\r\nBcc: x@example.com", "cannot contain line breaks"),
    ("host", "", "Enter the SMTP server's host name"),
    ("host", "smtp example.com", "cannot contain spaces"),
    ("host", "smtp.example.com\r\nQUIT", "cannot contain spaces, line breaks"),
    ("host", "smtp\x07.example.com", "control characters"),
    ("port", "0", "Enter a port from 1 to 65535"),
    ("port", "70000", "Enter a port from 1 to 65535"),
    ("port", "abc", "Enter a port from 1 to 65535"),
    ("port", "", "This field is required"),
    ("encryption", "tls", "Select a valid choice"),
    ("username", "al\nice", "cannot contain line breaks"),
    ("options", "[]", "not a list"),
    ("options", '"x"', "not a string"),
    ("options", '{"verify_peer":"maybe"}', "verify_peer must be true or false"),
    ("options", '{"restart_threshold":-1}', "restart_threshold must be a whole number, 0 or more"),
    ("options", '{"verfy_peer":false}', 'Did you mean "verify_peer"?'),
    ("options", '{"x": "' + "y" * 1_048_576 + '"}', "the limit is 10,000"),
    ("trusted_certificate", "hello", "This is not a PEM certificate"),
    (
        "trusted_certificate",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----",
        "The certificate cannot be read",
    ),
    ("trusted_certificate", "-----BEGIN PRIVATE KEY-----\nabc\n", "contains a private key"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_INPUT)
def test_bad_input_gets_a_message_at_its_field_and_nothing_is_saved(
    admin_client, field, value, message
):
    post(admin_client, password="original")
    before = SmtpSettings.objects.values().get()
    history = SmtpSettingsChange.objects.count()
    response = post(admin_client, **{"sender_name": "Changed", "password": "new", field: value})
    assert response.status_code == 200
    assert message in field_errors(response, field)
    html = response.content.decode()
    assert "Nothing was saved" in html
    assert f'id="field-{field}"' in html
    assert SmtpSettings.objects.values().get() == before
    assert SmtpSettingsChange.objects.count() == history
    assert store.load().reveal_password() == "original"


def test_invalid_post_still_shows_the_saved_plan_not_the_rejected_values(admin_client):
    post(admin_client)
    response = post(admin_client, host="smtp2.example.com", port="abc")
    assert "Connects to smtp.example.com:587" in response.content.decode()


def test_trusted_certificate_details_are_shown(admin_client):
    ca = trustme.CA()
    leaf = ca.issue_cert("smtp.example.com")
    bundle = leaf.cert_chain_pems[0].bytes().decode() + ca.cert_pem.bytes().decode()
    assert post(admin_client, trusted_certificate=bundle).status_code == 302
    page = admin_client.get(URL).content.decode()
    section = page.split('id="trusted-certificates"')[1].split('id="history"')[0]
    assert section.count("SHA-256") == 2
    assert "O=trustme" in section
    assert re.search(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", section)
    assert "against the system&#x27;s CAs and the stored trusted certificate" in page


def test_options_are_saved_as_entered_and_shown_again(admin_client):
    post(admin_client, options='{"verify_peer":"false", "timeout": 10}')
    assert store.load().options == {"verify_peer": "false", "timeout": 10}
    page = admin_client.get(URL).content.decode()
    assert "does not verify the server certificate" in page
    assert "Certificate verification is off" in page
    assert "&quot;timeout&quot;: 10" in page


def test_plain_smtp_with_a_password_to_a_remote_host_is_flagged(admin_client):
    post(admin_client, port="25", password="pw")
    page = admin_client.get(URL).content.decode()
    assert "The password would cross the network unencrypted" in page


def test_undecryptable_password_is_reported_not_a_500(admin_client, settings):
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    post(admin_client, password="pw")
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]  # the old key was lost
    response = admin_client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert "cannot be decrypted with the current keys" in page
    assert "Enter the password again" in page
    assert post(admin_client, password="pw-again").status_code == 302
    assert store.load().reveal_password() == "pw-again"


def test_password_sealed_for_another_server_is_never_revealed(admin_client):
    post(admin_client, password="pw")
    SmtpSettings.objects.update(host="attacker.example.net")  # bypassing the page
    saved = store.load()
    assert saved.password_state is PasswordState.OTHER_SERVER
    assert "belongs to other settings" in admin_client.get(URL).content.decode()


def test_only_get_and_post(admin_client):
    assert admin_client.put(URL).status_code == 405


def test_international_server_name_is_also_shown_readably(admin_client):
    post(admin_client, host="mail.bücher.example")
    page = admin_client.get(URL).content.decode()
    assert "Stored in its DNS form; it reads mail.bücher.example." in page


def test_admin_shows_the_settings_read_only_without_the_password(admin_client):
    post(admin_client, password="admin-hidden-pw")
    changelist = admin_client.get("/admin/smtpsettings/smtpsettings/")
    assert changelist.status_code == 200
    detail = admin_client.get("/admin/smtpsettings/smtpsettings/1/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "smtp.example.com" in html
    assert "admin-hidden-pw" not in html
    assert store.load().password_token not in html
    assert "Edit on the SMTP settings page" in html
    history = admin_client.get("/admin/smtpsettings/smtpsettingschange/")
    assert history.status_code == 200 and "admin-hidden-pw" not in history.content.decode()
