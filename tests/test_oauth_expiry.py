"""Issue 11: warnings before a client secret or certificate expires, on the page and as the
smtp.credential_expiring event, which integrations receive like any other."""

from __future__ import annotations

import datetime
import io

import pytest
import trustme
from django.core.management import call_command
from freezegun import freeze_time

from notifications.credential_notices import announce_expiring_credentials
from notifications.models import Event, Integration, OutboundEmail
from tests.test_oauth_settings import BASE, SECRET, URL

pytestmark = pytest.mark.django_db


def expiring_certificate(days: int) -> str:
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    leaf = trustme.CA().issue_cert(
        "gateway-manager-app",
        key_type=trustme.KeyType.RSA,
        not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1),
        not_after=not_after,
    )
    return leaf.cert_chain_pems[0].bytes().decode() + leaf.private_key_pem.bytes().decode()


def test_a_certificate_expiring_soon_is_warned_about_on_the_page(admin_client):
    page = admin_client.post(
        URL, {**BASE, "oauth_certificate": expiring_certificate(5)}, follow=True
    ).content.decode()
    assert "The Microsoft 365 certificate with its private key expires on" in page
    assert "in 4 days" in page or "in 5 days" in page


def test_a_client_secret_expiry_raises_one_notice_per_threshold(admin_client):
    Integration.objects.create(
        name="Ops", recipients=["ops@example.com"], all_events=True, enabled=True
    )
    expires = (datetime.date.today() + datetime.timedelta(days=20)).isoformat()
    admin_client.post(URL, {**BASE, "oauth_client_secret": SECRET, "oauth_secret_expires": expires})
    first = announce_expiring_credentials()
    again = announce_expiring_credentials()
    assert [event.payload["days_left"] for event in first] in ([19], [20])
    assert again == []
    with freeze_time(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=14)):
        out = io.StringIO()
        call_command("check_smtp_credentials", stdout=out)
    assert "Microsoft 365 client secret expires on" in out.getvalue()
    assert Event.objects.filter(type="smtp.credential_expiring").count() == 2
    subjects = list(
        OutboundEmail.objects.filter(category="notification").values_list("subject", flat=True)
    )
    assert any("client secret expires in" in subject for subject in subjects)
    assert all(SECRET not in subject for subject in subjects)


def test_a_credential_far_from_expiry_raises_nothing(admin_client):
    expires = (datetime.date.today() + datetime.timedelta(days=200)).isoformat()
    admin_client.post(URL, {**BASE, "oauth_client_secret": SECRET, "oauth_secret_expires": expires})
    assert announce_expiring_credentials() == []
