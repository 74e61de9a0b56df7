"""Issue 10, hole 3: "Trust this certificate" trusts exactly the certificate the administrator
looked at, for exactly the server and values that were tested, and nothing it could sign."""

from __future__ import annotations

import pytest

from smtpsettings import store
from smtpsettings.certificates import parse_pem_bundle
from smtpsettings.models import PasswordState
from tests.attackers import ca_as_server
from tests.settings_page import form_values, run_test, send_with_stored_settings
from tests.smtpservers import (
    PASSWORD,
    USERNAME,
    certificates,
    require_test_host,
    self_signed,
    smtp_server,
)

URL = "/settings/smtp/"
TRUST = "/settings/smtp/trust/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def sha256(pem: str) -> str:
    return parse_pem_bundle(pem)[0].sha256


def test_a_presented_ca_certificate_is_refused_and_vouches_for_nothing(admin_client):
    presented, signed_by_it = ca_as_server()
    with smtp_server(mode="starttls", certs=presented) as server:
        form = form_values(server)
        admin_client.post(URL, {**form, "action": "save"})
        html = run_test(admin_client, form)
        assert "not signed by an authority this machine trusts" in html
        confirm = admin_client.get(TRUST).content.decode()
        response = admin_client.post(TRUST, {"sha256": sha256(presented.pem)}, follow=True)
    # A server presenting another certificate that CA signed, for the same name, gets no mail.
    with smtp_server(mode="starttls", certs=signed_by_it, port=server.port) as impostor:
        problem = send_with_stored_settings()
    assert impostor.messages == [], "a certificate signed by the trusted CA was accepted"
    assert problem is not None and problem.kind == "untrusted"
    assert "is a CA certificate" in confirm
    assert 'type="submit"' not in confirm.split("<main", 1)[1]
    assert "is a CA certificate" in response.content.decode()
    assert store.load().trusted_certificate == ""


def test_a_trusted_server_certificate_accepts_that_certificate_only(admin_client):
    trusted, other = self_signed(), self_signed()
    with smtp_server(mode="starttls", certs=trusted) as server:
        form = form_values(server)
        run_test(admin_client, form)
        admin_client.post(TRUST, {"sha256": sha256(trusted.pem)})
        assert send_with_stored_settings() is None
    with smtp_server(mode="starttls", certs=other, port=server.port) as impostor:
        problem = send_with_stored_settings()
    assert len(server.messages) == 1 and impostor.messages == []
    assert problem is not None and "other than the trusted one" in problem.advice


def test_a_pasted_ca_stays_possible_with_a_warning(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        form = form_values(server, trusted_certificate=certs.ca_pem)
        page = admin_client.post(URL, {**form, "action": "save"}, follow=True).content.decode()
        assert send_with_stored_settings() is None
    assert "vouches for every name it signs" in page


def test_trusting_saves_the_tested_values_together_with_the_certificate(admin_client):
    genuine = certificates()
    fake = self_signed()
    with (
        smtp_server(mode="starttls", certs=genuine, auth=True) as real,
        smtp_server(mode="starttls", certs=fake, auth=True) as attacker,
    ):
        saved = form_values(real, username=USERNAME, trusted_certificate=genuine.ca_pem)
        admin_client.post(URL, {**saved, "password": PASSWORD, "action": "save"})
        # An unsaved test against another port, with an unsaved sender name, no password typed.
        tested = form_values(attacker, username=USERNAME, sender_name="Gateway Ops")
        run_test(admin_client, tested)
        confirm = admin_client.get(TRUST).content.decode()
        page = admin_client.post(TRUST, {"sha256": sha256(fake.pem)}, follow=True).content.decode()
        record = store.load()
        problem = send_with_stored_settings()
    assert f"Port</td><td>{real.port}</td><td>{attacker.port}" in confirm.replace("\n", "")
    # Trusted for exactly the tested server, with the tested values, never the old host's.
    assert (record.port, record.sender_name) == (attacker.port, "Gateway Ops")
    assert record.trusted_certificate.strip() == fake.pem.strip()
    assert record.password_state is PasswordState.NOT_SET
    assert "The stored password was removed" in page
    assert attacker.recorder.logins == [] and real.recorder.logins == []
    assert problem is not None and "No password is stored" in problem.advice


def test_trusting_after_a_test_with_a_typed_password_keeps_that_password(admin_client):
    certs = self_signed()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        tested = form_values(server, username=USERNAME, sender_name="Gateway Ops")
        run_test(admin_client, {**tested, "password": PASSWORD})
        admin_client.post(TRUST, {"sha256": sha256(certs.pem)})
        record = store.load()
        assert record.sender_name == "Gateway Ops"
        assert record.password_state is PasswordState.SET
        assert send_with_stored_settings() is None
    # The test stopped at the untrusted certificate, before AUTH; the send signed in.
    assert server.recorder.logins == [f"PLAIN {USERNAME}"]


@pytest.mark.parametrize(("digits", "name"), [(32, "MD5"), (40, "SHA1")])
def test_md5_and_sha1_pins_are_accepted_with_a_warning(admin_client, digits, name):
    options = '{"verify_peer": false, "peer_fingerprint": "%s"}' % ("ab" * (digits // 2))
    form = {"sender_email": "gateway@example.com", "host": "smtp.example.com", "port": "587"}
    response = admin_client.post(
        URL, {**form, "encryption": "auto", "options": options, "action": "save"}, follow=True
    )
    page = response.content.decode()
    assert f"({name} is weak: pin SHA-256)" in page  # the plan sentence
    assert f"The peer_fingerprint is {name}, a weak hash" in page
