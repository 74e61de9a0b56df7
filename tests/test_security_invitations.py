"""Issue 10, holes 1 and 5: who may grant which group through an invitation, and a box of
addresses that cannot hold a worker or blow up the page."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import CommandError, call_command
from django.utils import timezone

from gatewaymgr import invitations
from gatewaymgr.models import Invitation
from notifications.models import OutboundEmail
from tests.conftest import make_user

STRONG = "violet-harbour-71-kettle"
pytestmark = pytest.mark.django_db

INVITER_PERMS = ("gatewaymgr.view_invitation", "gatewaymgr.add_invitation")


@pytest.fixture
def everything(db) -> Group:
    group = Group.objects.create(name="Everything")
    group.permissions.set(Permission.objects.all())
    return group


@pytest.fixture
def readers(db) -> Group:
    group = Group.objects.create(name="Readers")
    group.permissions.set(
        Permission.objects.filter(content_type__app_label="gatewaymgr", codename="view_invitation")
    )
    return group


@pytest.fixture
def mallory(client, db) -> User:
    """The attacker: may see invitations and invite, nothing else."""
    user = make_user("mallory", *INVITER_PERMS)
    client.force_login(user)
    return user


def invitation_for(email: str, groups: list[Group], inviter: User | None = None) -> tuple:
    """An open invitation with a known token (not read back from the outbox)."""
    token, token_hash = invitations.new_token()
    now = timezone.now()
    invitation = Invitation.objects.create(
        email=email, token_hash=token_hash, expires_at=now + datetime.timedelta(days=7),
        invited_by=inviter,
    )  # fmt: skip
    invitation.groups.set(groups)
    return invitation, token


def accept_data(**overrides: str) -> dict[str, str]:
    return {"name": "Bob", "username": "bob", "password1": STRONG, "password2": STRONG, **overrides}


def open_link(client, token: str) -> str:
    """Follow the e-mail's link as a browser does; the URL of the accept form it leads to."""
    response = client.get(f"/invite/{token}/")
    assert response.status_code == 302
    return response.url


def accept(client, token: str, username: str = "bob") -> User:
    client.logout()
    response = client.post(open_link(client, token), accept_data(username=username))
    assert response.status_code == 302, response.content.decode()[:2000]
    return User.objects.get(username=username)


# --- 1. Privilege escalation through invitations ----------------------------------------------


def test_a_group_with_permissions_the_inviter_lacks_is_not_offered(client, mallory, everything):
    Group.objects.create(name="Newcomers")  # no permissions: anyone who invites may give it
    page = client.get("/users/").content.decode()
    assert "Newcomers" in page
    assert "Everything" not in page


def test_posting_a_bigger_group_is_refused_at_the_field_and_invites_nobody(
    client, mallory, everything
):
    response = client.post(
        "/users/",
        {"addresses": "mallory@evil.example", "groups": [everything.pk], "valid_days": "7"},
    )
    assert response.status_code == 200
    errors = response.context["form"].errors["groups"]
    assert any("You cannot grant “Everything”" in error for error in errors), errors
    assert "You cannot grant “Everything”" in response.content.decode()
    assert Invitation.objects.count() == 0
    assert OutboundEmail.objects.count() == 0


def test_reinviting_into_a_bigger_group_leaves_the_invitation_as_it_was_and_accepting_it_gives_nothing_more(  # noqa: E501
    client, mallory, everything, readers
):
    invitation, token = invitation_for("mallory@evil.example", [readers], inviter=mallory)
    response = client.post(
        "/users/",
        {"addresses": "mallory@evil.example", "groups": [everything.pk], "valid_days": "7"},
    )
    assert response.status_code == 200 and response.context["form"].errors["groups"]
    assert list(invitation.groups.all()) == [readers]
    joined = accept(client, token)
    assert list(joined.groups.all()) == [readers]
    assert not joined.has_perm("smtpsettings.change_smtpsettings")
    assert not joined.has_perm("notifications.manage_apitoken")


def test_resending_an_invitation_into_a_bigger_group_is_refused_with_a_clear_message(
    client, mallory, everything
):
    admin = make_user("alice", superuser=True)
    invitation, token = invitation_for("mallory@evil.example", [everything], inviter=admin)
    response = client.post(f"/users/invitations/{invitation.pk}/resend/", follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    assert "You cannot resend the invitation for mallory@evil.example" in page
    assert "“Everything”" in page
    assert OutboundEmail.objects.count() == 0
    invitation.refresh_from_db()
    assert invitation.token_hash == invitations.hash_token(token)  # no new link went out


def test_the_invite_command_limits_invited_by_to_that_users_permissions(mallory, everything):
    with pytest.raises(CommandError, match="--group: mallory cannot grant “Everything”"):
        call_command(
            "invite", "mallory@evil.example", "--group", "Everything", "--invited-by", "mallory"
        )
    assert Invitation.objects.count() == 0 and OutboundEmail.objects.count() == 0


def test_the_invite_command_without_invited_by_may_grant_any_group(everything):
    # Whoever runs manage.py has the shell and the database already.
    call_command("invite", "bob@example.com", "--group", "Everything")
    assert list(Invitation.objects.get().groups.all()) == [everything]


def test_a_user_who_holds_a_groups_permissions_may_grant_it(client, readers, everything):
    olivia = make_user("olivia", *INVITER_PERMS)
    olivia.groups.add(readers)  # her permissions may come from her own groups
    client.force_login(olivia)
    page = client.get("/users/").content.decode()
    assert "Readers" in page and "Everything" not in page
    response = client.post(
        "/users/", {"addresses": "bob@example.com", "groups": [readers.pk], "valid_days": "7"}
    )
    assert response.status_code == 302
    invitation = Invitation.objects.get()
    assert list(invitation.groups.all()) == [readers]
    assert client.post(f"/users/invitations/{invitation.pk}/resend/").status_code == 302
    call_command("invite", "carol@example.com", "--group", "Readers", "--invited-by", "olivia")
    assert Invitation.objects.filter(email="carol@example.com", groups=readers).exists()


# --- 5. The invite box cannot hold a worker or blow up the page ----------------------------------


def test_a_pathological_200kb_entry_is_refused_at_once_and_the_good_ones_invited(admin_client):
    # Spaces between two letters made the old "Name <address>" regex backtrack: O(n²) steps,
    # about 30 s of a gunicorn worker for 150 KB. Parsing is linear now and an entry is capped.
    hostile = "a" + " " * 200_000 + "b"
    response = admin_client.post(
        "/users/", {"addresses": f"bob@example.com\n{hostile}", "valid_days": "7"}
    )
    assert response.status_code == 200
    problems = response.context["form"].address_problems
    assert problems == ["Line 2: it is longer than 420 characters."]
    assert list(Invitation.objects.values_list("email", flat=True)) == ["bob@example.com"]


def test_100k_junk_entries_are_refused_with_the_cap_on_a_small_page(admin_client):
    junk = "\n".join(f"junk{number}" for number in range(100_000))
    response = admin_client.post("/users/", {"addresses": junk, "valid_days": "7"})
    assert response.status_code == 200
    page = response.content.decode()
    assert len(response.content) < 100_000
    assert "More than 10,000 entries" in page
    assert response.context["form"].errors["addresses"]
    assert Invitation.objects.count() == 0


def test_many_bad_entries_show_the_first_20_problems_and_how_many_more(admin_client):
    junk = "\n".join(["bob@example.com"] + ["junk"] * 9_999)
    response = admin_client.post("/users/", {"addresses": junk, "valid_days": "7"})
    assert response.status_code == 200
    assert len(response.content) < 100_000
    problems = response.context["form"].address_problems
    assert len(problems) == 21
    assert problems[0] == "Line 2: “junk” is not a valid e-mail address."
    assert problems[-1] == "… and 9,979 more, left in the box below."
    assert list(Invitation.objects.values_list("email", flat=True)) == ["bob@example.com"]


def test_a_box_past_the_character_cap_is_refused_at_its_field(admin_client):
    entries = ["x" * 300 + "@example.com"] * 7_000  # under 10,000 entries, over 2,000,000 chars
    box = "\n".join(entries)
    response = admin_client.post("/users/", {"addresses": box, "valid_days": "7"})
    assert response.status_code == 200
    (error,) = response.context["form"].errors["addresses"]
    assert error.startswith(f"The box holds {len(box):,} characters; at most 2,000,000")
    assert len(response.content) < 100_000
    assert Invitation.objects.count() == 0


# --- 6. The accept page leaks its token to nobody ---------------------------------------------


def test_a_link_with_a_token_sends_no_referrer_and_leads_to_a_form_without_it(client):
    _invitation, token = invitation_for("bob@example.com", [])
    link = client.get(f"/invite/{token}/")
    assert link.status_code == 302 and link["Referrer-Policy"] == "no-referrer"
    assert token not in link.url  # the form's URL, and so any Referer from it, has no token
    cookie = link.cookies[next(iter(link.cookies))]
    assert cookie.value == token and cookie["httponly"] and cookie["path"] == link.url
    assert client.get(link.url).status_code == 200
    joined = client.post(link.url, accept_data())
    assert joined.status_code == 302 and joined.cookies[cookie.key].value == ""  # deleted
    for gone in (client.get(f"/invite/{token}/"), client.get("/invite/not-a-token/")):
        assert gone.status_code == 410 and gone["Referrer-Policy"] == "no-referrer"


def test_the_accept_form_without_the_links_cookie_asks_to_open_the_link_again(client):
    invitation, token = invitation_for("bob@example.com", [])
    _other, other_token = invitation_for("carol@example.com", [])
    response = client.post(f"/invite/join/{invitation.pk}/", accept_data())  # no cookie
    assert response.status_code == 410
    assert "Open the invitation link again" in response.content.decode()
    client.cookies[f"invitation_{invitation.pk}"] = other_token  # another invitation's token
    assert client.post(f"/invite/join/{invitation.pk}/", accept_data()).status_code == 410
    assert not User.objects.exists()
    client.post(open_link(client, token), accept_data())  # two links, two tabs: each its own
    client.post(open_link(client, other_token), accept_data(username="carol"))
    assert sorted(User.objects.values_list("email", "username")) == [
        ("bob@example.com", "bob"),
        ("carol@example.com", "carol"),
    ]


def test_the_accept_pages_password_is_hidden_from_error_reports(client):
    _invitation, token = invitation_for("bob@example.com", [])
    response = client.post(open_link(client, token), accept_data(password2="other"))
    assert response.status_code == 200
    hidden = response.wsgi_request.sensitive_post_parameters
    assert {"password1", "password2"} <= set(hidden)
