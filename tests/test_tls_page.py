"""What Settings -> SMTP says about opportunistic TLS and about a pin the connection would not
check (issue 13)."""

import html

import pytest

from tests.test_settings_page import URL, post

pytestmark = pytest.mark.django_db


def page_of(client) -> str:
    return html.unescape(client.get(URL).content.decode())


def test_port_25_reads_as_opportunistic_tls(admin_client):
    post(admin_client, port="25", username="")
    page = page_of(admin_client)
    assert "upgrades with STARTTLS when the server offers it" in page
    assert "(opportunistic TLS: port 25)" in page
    assert "On port 25 and to localhost it uses STARTTLS when the server offers it" in page


def test_a_pin_on_port_25_reads_as_required_verified_starttls(admin_client):
    post(admin_client, port="25", username="", options='{"peer_fingerprint": "' + "ab" * 32 + '"}')
    page = page_of(admin_client)
    assert "upgrades with STARTTLS (required: peer_fingerprint is set)" in page
    assert "requires the certificate fingerprint SHA-256 AB:AB" in page


def test_a_pin_a_plain_connection_never_checks_is_said_on_the_page(admin_client):
    options = '{"auto_tls": false, "peer_fingerprint": "' + "ab" * 32 + '"}'
    post(admin_client, port="25", username="", options=options)
    page = page_of(admin_client)
    assert "without encryption (auto_tls is off)" in page
    assert "does not use peer_fingerprint, which only verified TLS checks" in page
