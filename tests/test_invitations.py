"""Inviting users by e-mail, end to end on the server side: the page, the command, the e-mail as
a real SMTP server receives it, the accept page and every way a link can stop working."""

from __future__ import annotations

import datetime
import hashlib
import re
import threading
from email import message_from_bytes, policy

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from django.utils.html import strip_tags

from gatewaymgr import invitations
from gatewaymgr.addresses import parse_invitee
from gatewaymgr.models import Invitation
from notifications.delivery import Courier
from notifications.models import Event, Integration, OutboundEmail, Status
from tests.conftest import make_user
from tests.outbox import point_settings_at
from tests.smtpservers import Recorder, require_test_host, smtp_server

STRONG = "violet-harbour-71-kettle"
LINK = re.compile(r"https://console\.example\.com/invite/([A-Za-z0-9_-]+)/")


@pytest.fixture(autouse=True)
def _public_url(settings):
    settings.PUBLIC_URL = "https://console.example.com"
    settings.OUTBOX_RETRY_FIRST_DELAY = 0


def invite_one(email="bob@example.com", inviter=None, **kwargs) -> tuple[Invitation, str]:
    """Invite through the service and return the invitation with the token from its e-mail."""
    report = invitations.invite([parse_invitee(email)], inviter=inviter, **kwargs)
    (invitation,) = report.invited + report.reinvited
    return invitation, token_in_outbox(invitation)


def token_in_outbox(invitation: Invitation) -> str:
    email = OutboundEmail.objects.filter(cause_id=str(invitation.pk), category="invitation").first()
    return LINK.search(email.message_bytes().decode()).group(1)


def open_link(client, token: str) -> str:
    """Follow the e-mail's link as a browser does: it leads on to the accept form, whose URL
    holds no token (the token travels in a cookie). The form's URL."""
    response = client.get(f"/invite/{token}/")
    assert response.status_code == 302, response.status_code
    return response.url


def accept_data(**overrides):
    return {
        "name": "Bob Builder",
        "username": "bob",
        "password1": STRONG,
        "password2": STRONG,
        **overrides,
    }


# --- The e-mail, as a real SMTP server receives it -------------------------------------------


@pytest.mark.django_db
def test_the_invitation_arrives_with_link_inviter_expiry_and_both_parts():
    require_test_host()
    inviter = make_user("alice", superuser=True)
    inviter.first_name, inviter.last_name = "Alice", "Admin"
    inviter.save()
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        invitation, _ = invite_one("Bob@Example.com", inviter=inviter, valid_days=3)
        Courier().drain()
    (received,) = server.messages
    message = message_from_bytes(received.data, policy=policy.default)
    assert received.rcpt_tos == ["Bob@example.com"]
    assert message["From"] == "gateway@example.com"  # the stored sender
    assert message["Subject"] == "Alice Admin invited you to Gateway Manager"
    text = message.get_body(("plain",)).get_content()
    html = strip_tags(message.get_body(("html",)).get_content())
    for part in (text, html):
        assert "Alice Admin (alice@example.com) invited you" in part
        assert LINK.search(part), "the link is built from PUBLIC_URL"
        expires = timezone.localtime(invitation.expires_at)
        assert expires.strftime("%-d %B %Y, %H:%M") in part
    assert abs(invitation.expires_at - timezone.now() - datetime.timedelta(days=3)) < (
        datetime.timedelta(minutes=1)
    )
    assert OutboundEmail.objects.get().status == Status.SENT


@pytest.mark.django_db
def test_the_token_is_random_and_only_its_hash_is_stored():
    first, token = invite_one("bob@example.com")
    _second, other = invite_one("carol@example.com")
    assert token != other
    assert len(token) >= 43  # 32 random bytes, URL-safe base64: 256 bits
    first.refresh_from_db()
    assert first.token_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = [str(value) for value in Invitation.objects.values_list()]
    assert not any(token in value or other in value for value in stored)


@pytest.mark.django_db
def test_an_inviter_name_with_line_breaks_cannot_inject_headers():
    require_test_host()
    inviter = make_user("mallory", superuser=True)
    inviter.first_name = "Mallory\r\nBcc: everyone@example.com"
    inviter.save()
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        invite_one(inviter=inviter)
        Courier().drain()
    (received,) = server.messages
    assert received.rcpt_tos == ["bob@example.com"]
    assert received.message["Bcc"] is None
    assert received.message["Subject"] == (
        "Mallory Bcc: everyone@example.com invited you to Gateway Manager"
    )


# --- The page ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_inviting_many_reports_each_bad_line_and_still_invites_the_good(admin_client):
    make_user("existing")  # existing@example.com has an account
    response = admin_client.post(
        "/users/",
        {
            "addresses": "bob@example.com\nbob@\nCarol <carol@example.com>, Existing@example.com\n"
            "not an address",
            "valid_days": "7",
        },
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert "Line 2: “bob@” is not a valid e-mail address." in page
    assert "Line 4: “not an address” is not a valid e-mail address." in page
    assert "Existing@example.com already has an account (existing)" in page
    assert "Invited 2: bob@example.com, carol@example.com" in page
    # The box keeps only what still needs fixing.
    box = response.context["form"]["addresses"].value()
    assert box.splitlines() == ["bob@", "not an address", "Existing@example.com"]
    assert sorted(Invitation.objects.values_list("email", flat=True)) == [
        "bob@example.com",
        "carol@example.com",
    ]
    assert Invitation.objects.get(email="carol@example.com").name == "Carol"
    assert OutboundEmail.objects.filter(category="invitation").count() == 2


@pytest.mark.django_db
def test_bad_expiry_is_reported_at_its_field_and_nothing_is_sent(admin_client):
    response = admin_client.post("/users/", {"addresses": "bob@example.com", "valid_days": "0"})
    assert response.status_code == 200
    assert "greater than or equal to 1" in response.content.decode()
    assert Invitation.objects.count() == 0 and OutboundEmail.objects.count() == 0


@pytest.mark.django_db
def test_groups_chosen_on_the_page_are_given_on_accept(admin_client, client):
    operators = Group.objects.create(name="Operators")
    Group.objects.create(name="Auditors")
    response = admin_client.post(
        "/users/", {"addresses": "bob@example.com", "groups": [operators.pk], "valid_days": "14"}
    )
    assert response.status_code == 302
    invitation = Invitation.objects.get()
    assert list(invitation.groups.all()) == [operators]
    assert invitation.valid_days == 14
    client.post(open_link(client, token_in_outbox(invitation)), accept_data())
    assert list(User.objects.get(username="bob").groups.all()) == [operators]


@pytest.mark.django_db
def test_reinviting_a_pending_address_replaces_its_token(admin_client, client):
    _, old = invite_one()
    admin_client.post("/users/", {"addresses": "bob@example.com", "valid_days": "7"})
    invitation = Invitation.objects.get()  # still one invitation
    new = token_in_outbox(invitation)
    assert new != old
    assert client.get(f"/invite/{old}/").status_code == 410
    assert client.get(open_link(client, new)).status_code == 200


@pytest.mark.django_db
def test_the_list_shows_status_and_delivery_with_the_reason(admin_client):
    require_test_host()
    recorder = Recorder(refuse_recipients={"gone@example.com": "550 5.1.1 No such mailbox"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        invite_one("bob@example.com")
        invite_one("gone@example.com")
        Courier().drain()
    invite_one("later@example.com")  # still queued
    _accepted, token = invite_one("carol@example.com")
    invitations.accept(token, name="Carol", username="carol", password=STRONG)
    revoked, _ = invite_one("dave@example.com")
    invitations.revoke(revoked, None)
    expired, _ = invite_one("erin@example.com")
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now())

    page = admin_client.get("/users/").content.decode()
    rows = {
        email: page[page.index(f'data-email="{email}"') :][:2000]
        for email in ("bob", "gone", "later", "carol", "dave", "erin")
        for email in [f"{email}@example.com"]
    }
    assert ">Pending<" in rows["bob@example.com"] and ">Sent<" in rows["bob@example.com"]
    assert ">Failed<" in rows["gone@example.com"]
    assert "550 5.1.1 No such mailbox" in rows["gone@example.com"]
    assert ">Queued<" in rows["later@example.com"]
    assert ">Accepted<" in rows["carol@example.com"] and "as carol" in rows["carol@example.com"]
    assert ">Revoked<" in rows["dave@example.com"]
    assert ">Cancelled<" in rows["dave@example.com"]  # its waiting e-mail will not go out
    assert ">Expired<" in rows["erin@example.com"]
    filtered = admin_client.get("/users/?status=expired").content.decode()
    assert 'data-email="erin@example.com"' in filtered
    assert 'data-email="bob@example.com"' not in filtered


@pytest.mark.django_db
def test_resend_issues_a_new_link_and_fresh_expiry(admin_client, client):
    invitation, old = invite_one()
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now())
    response = admin_client.post(f"/users/invitations/{invitation.pk}/resend/", follow=True)
    assert "Sent a new link to bob@example.com" in response.content.decode()
    invitation.refresh_from_db()
    assert invitation.status == "pending"
    emails = OutboundEmail.objects.filter(cause_id=str(invitation.pk)).order_by("id")
    new = LINK.search(emails.last().message_bytes().decode()).group(1)
    assert client.get(f"/invite/{old}/").status_code == 410
    assert client.get(open_link(client, new)).status_code == 200


@pytest.mark.django_db
def test_pages_need_sign_in_and_the_matching_permission(client):
    invitation, _token = invite_one()
    assert client.get("/users/").url.startswith("/login/")
    viewer = make_user("viewer", "gatewaymgr.view_invitation")
    nobody = make_user("nobody")
    client.force_login(nobody)
    assert client.get("/users/").status_code == 403
    client.force_login(viewer)
    page = client.get("/users/")
    assert page.status_code == 200 and "Send invitations" not in page.content.decode()
    assert (
        client.post("/users/", {"addresses": "x@example.com", "valid_days": 7}).status_code == 403
    )
    assert client.post(f"/users/invitations/{invitation.pk}/revoke/").status_code == 403
    assert client.post(f"/users/invitations/{invitation.pk}/resend/").status_code == 403
    assert Invitation.objects.count() == 1 and invitation.status == "pending"


# --- Accepting --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_accept_page_shows_the_address_and_suggests_a_user_name(client):
    User.objects.create_user("bob", "bob@elsewhere.example")
    _invitation, token = invite_one("bob@example.com")
    response = client.get(open_link(client, token))
    form = response.context["form"]
    assert form["email"].value() == "bob@example.com"
    assert form.fields["email"].disabled
    assert form["username"].value() == "bob2"  # bob is taken
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db
def test_accepting_creates_an_active_user_signs_in_and_marks_accepted(client):
    invitation, token = invite_one("bob@example.com")
    response = client.post(
        open_link(client, token), accept_data(email="mallory@example.com"), follow=True
    )
    assert response.redirect_chain[-1][0] == "/"
    assert response.context["user"].username == "bob"
    user = User.objects.get(username="bob")
    assert user.is_active and user.email == "bob@example.com"  # not what the POST said
    assert user.get_full_name() == "Bob Builder" and user.check_password(STRONG)
    invitation.refresh_from_db()
    assert invitation.status == "accepted" and invitation.user == user
    assert client.get(f"/invite/{token}/").status_code == 410


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"password1": "password", "password2": "password"}, "password1", "too common"),
        ({"password1": "bobbuilder", "password2": "bobbuilder"}, "password1", "too similar"),
        ({"password2": STRONG + "x"}, "password2", "The two passwords differ"),
        ({"name": "Bob\r\nBuilder"}, "name", "cannot contain line breaks"),
        ({"username": "bob smith"}, "username", "Enter a valid username"),
        ({"username": "ALICE"}, "username", "is taken"),
    ],
)
def test_bad_input_on_the_accept_page_is_reported_at_its_field(client, data, field, message):
    make_user("alice")
    invitation, token = invite_one()
    response = client.post(open_link(client, token), accept_data(**data))
    assert response.status_code == 200
    assert any(message in error for error in response.context["form"].errors[field])
    assert not User.objects.filter(email="bob@example.com").exists()
    invitation.refresh_from_db()
    assert invitation.status == "pending"


@pytest.mark.django_db
def test_an_account_made_for_the_address_meanwhile_is_not_duplicated(client):
    _invitation, token = invite_one()
    User.objects.create_user("robert", "BOB@example.com")  # made in the admin meanwhile
    response = client.post(open_link(client, token), accept_data())
    assert "An account for bob@example.com exists already: sign in" in response.content.decode()
    assert User.objects.filter(email__iexact="bob@example.com").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "title", "advice"),
    [
        ("accepted", "already used", "Ask Alice (alice@example.com)"),
        ("expired", "has expired", "Ask Alice (alice@example.com) to send you a new one"),
        ("revoked", "was withdrawn", "by Alice"),
        ("tampered", "link is not valid", "invited you to send the invitation again"),
    ],
)
def test_a_link_that_no_longer_works_leads_to_a_clear_410(client, change, title, advice):
    alice = make_user("alice", superuser=True)
    alice.first_name = "Alice"
    alice.save()
    invitation, token = invite_one(inviter=alice)
    if change == "accepted":
        invitations.accept(token, name="Bob", username="bob", password=STRONG)
    elif change == "expired":
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now())
    elif change == "revoked":
        invitations.revoke(invitation, alice)
    else:
        token = token[:-1] + ("A" if token[-1] != "A" else "B")
    for method in (client.get, client.post):
        response = method(f"/invite/{token}/", accept_data(username="other"))
        assert response.status_code == 410
        page = response.content.decode()
        assert title in page and advice in page
    assert User.objects.filter(username="other").count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_accepts_racing_on_one_token_create_exactly_one_user():
    invitation, token = invite_one()
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def accept(username: str) -> None:
        try:
            start.wait()
            invitations.accept(token, name="Bob", username=username, password=STRONG)
            outcomes.append("joined")
        except invitations.InvitationUnusable as error:
            outcomes.append(error.status)
        finally:
            connection.close()

    threads = [threading.Thread(target=accept, args=(name,)) for name in ("bob", "robert")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["accepted", "joined"]
    assert User.objects.filter(email="bob@example.com").count() == 1
    invitation.refresh_from_db()
    assert invitation.user.email == "bob@example.com"


# --- The command ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_invite_command_invites_with_groups_and_expiry(capsys):
    Group.objects.create(name="Operators")
    call_command(
        "invite", "bob@example.com", "Carol <carol@example.com>", "--group", "Operators",
        "--expires-days", "2",
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert "invited    bob@example.com" in out and "2 invitation e-mail(s) queued" in out
    assert "No SMTP server is configured: the e-mails wait in the outbox" in err
    carol = Invitation.objects.get(email="carol@example.com")
    assert carol.name == "Carol" and [g.name for g in carol.groups.all()] == ["Operators"]
    assert carol.expires_at - carol.sent_at == datetime.timedelta(days=2)


@pytest.mark.django_db
def test_the_invite_command_reports_bad_addresses_and_exits_non_zero(capsys):
    make_user("existing")
    with pytest.raises(CommandError, match="3 address"):
        call_command(
            "invite", "ok@example.com", "bad@", "Eve\r\nBcc: x <eve@example.com>",
            "existing@example.com",
        )  # fmt: skip
    err = capsys.readouterr().err
    assert "Argument 2: “bad@” is not a valid e-mail address." in err
    assert "Argument 3: it contains a line break" in err
    assert "existing@example.com already has an account" in err
    assert list(Invitation.objects.values_list("email", flat=True)) == ["ok@example.com"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--group", "Nope"], "--group: no group named Nope"),
        (["--expires-days", "0"], "--expires-days: enter 1 to 365"),
        (["--invited-by", "ghost"], "--invited-by: no user named ghost"),
    ],
)
def test_the_invite_command_refuses_bad_options_before_inviting(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("invite", "bob@example.com", *args)
    assert Invitation.objects.count() == 0


# --- Events: invitations tell the integrations -------------------------------------------------


@pytest.mark.django_db
def test_inviting_and_joining_fire_user_invited_and_user_joined_to_integrations():
    require_test_host()
    alice = make_user("alice", superuser=True)
    Integration.objects.create(
        name="People", recipients=["hr@example.com"], events=["user.invited", "user.joined"]
    )
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        invitation, token = invite_one("bob@example.com", inviter=alice)
        invitations.accept(token, name="Bob Builder", username="bob", password=STRONG)
        Courier().drain()
    invited, joined = Event.objects.order_by("id")
    assert invited.type == "user.invited" and invited.source == "product"
    assert invited.payload == {
        "email": "bob@example.com",
        "invited_by": "alice",
        "expires_at": invitation.expires_at.isoformat(),
    }
    assert joined.type == "user.joined"
    assert joined.payload == {
        "username": "bob",
        "email": "bob@example.com",
        "name": "Bob Builder",
        "invited_by": "alice",
    }
    to_hr = [m for m in server.messages if m.rcpt_tos == ["hr@example.com"]]
    subjects = sorted(m.message["Subject"] for m in to_hr)
    assert subjects == ["alice invited bob@example.com", "bob joined Gateway Manager"]
    assert token not in str([m.data for m in to_hr])  # the link goes to the invitee only


@pytest.mark.django_db
def test_a_failed_accept_fires_nothing(client):
    Integration.objects.create(name="People", recipients=["hr@example.com"], all_events=True)
    _, token = invite_one()
    client.post(open_link(client, token), accept_data(password2="different-password-99"))
    assert list(Event.objects.values_list("type", flat=True)) == ["user.invited"]
