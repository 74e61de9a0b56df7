"""The confirmation pages' rules, below the browser: asking (GET) never acts, acting (POST)
needs the same permission as before, and each needs its own permission to be shown."""

from __future__ import annotations

import pytest

import notifications
from gatewaymgr import invitations
from gatewaymgr.addresses import Invitee
from gatewaymgr.models import Invitation
from notifications.models import ApiToken, Dispatch, Integration, OutboundEmail, Status
from notifications.tokens import create as create_token
from tests.conftest import make_user
from tests.outbox import queue

pytestmark = pytest.mark.django_db


def test_asking_changes_nothing(admin_client):
    invitations.invite([Invitee("bob@example.com")])
    queue(1)
    integration = Integration.objects.create(name="Ops", recipients=["o@example.com"])
    create_token("ci", None)
    invitation, email, token = (
        Invitation.objects.get(),
        OutboundEmail.objects.last(),
        ApiToken.objects.get(),
    )
    for url in (
        f"/users/invitations/{invitation.pk}/revoke/",
        f"/outbox/{email.pk}/cancel/",
        f"/integrations/{integration.pk}/delete/",
        f"/integrations/tokens/{token.pk}/revoke/",
    ):
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert 'method="post"' in response.content.decode()
    assert Invitation.objects.get().status == "pending"
    email.refresh_from_db()
    assert email.status == Status.QUEUED
    assert Integration.objects.exists() and ApiToken.objects.get().active


def test_each_confirmation_needs_its_permission(client):
    invitations.invite([Invitee("bob@example.com")])
    integration = Integration.objects.create(name="Ops", recipients=["o@example.com"])
    invitation = Invitation.objects.get()
    email = OutboundEmail.objects.get()
    # May see each page, and change integrations, but neither revoke, cancel nor delete.
    client.force_login(
        make_user(
            "viewer",
            "gatewaymgr.view_invitation",
            "notifications.view_outboundemail",
            "notifications.view_integration",
            "notifications.change_integration",
        )
    )
    for url in (
        f"/users/invitations/{invitation.pk}/revoke/",
        f"/outbox/{email.pk}/cancel/",
        f"/integrations/{integration.pk}/delete/",
    ):
        assert client.get(url).status_code == 403, url
        assert client.post(url).status_code == 403, url
    assert Integration.objects.exists() and Invitation.objects.get().status == "pending"
    # Nor are they offered.
    assert "/revoke/" not in client.get("/users/").content.decode()
    assert "/cancel/" not in client.get(f"/outbox/{email.pk}/").content.decode()
    assert "/delete/" not in client.get(f"/integrations/{integration.pk}/").content.decode()


def test_resend_and_retry_still_act_only_on_post(admin_client):
    invitations.invite([Invitee("bob@example.com")])
    invitation = Invitation.objects.get()
    assert admin_client.get(f"/users/invitations/{invitation.pk}/resend/").status_code == 405


def test_deleting_an_integration_keeps_its_events_and_their_emails(admin_client):
    integration = Integration.objects.create(
        name="Ops", recipients=["o@example.com"], all_events=True
    )
    event = notifications.trigger("api.retired", {"api": "legacy"})
    email = Dispatch.objects.get(event=event).email
    admin_client.post(f"/integrations/{integration.pk}/delete/")
    dispatch = Dispatch.objects.get(event=event)
    assert dispatch.integration is None and dispatch.integration_name == "Ops"
    assert dispatch.email == email and OutboundEmail.objects.filter(pk=email.pk).exists()
    page = admin_client.get(f"/events/{event.pk}/").content.decode()
    assert "Ops (deleted)" in page and email.subject in page
