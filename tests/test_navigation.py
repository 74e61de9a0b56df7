"""The main navigation offers only what the signed-in user may open: a link that ends in 403, or
in an admin with nothing to show, is a dead end."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def nav_links(client, username: str, *perms: str, staff: bool = False) -> str:
    user = make_user(username, "notifications.view_outboundemail", *perms)
    user.is_staff = staff
    user.save()
    client.force_login(user)
    page = client.get(reverse("notifications:outbox")).content.decode()
    return page.split('aria-label="Main"', 1)[1].split("</nav>", 1)[0]


def test_staff_with_nothing_to_see_in_the_admin_get_no_admin_link(client):
    assert reverse("admin:index") not in nav_links(client, "staffer", staff=True)
    # ... where it would only have said "You don't have permission to view or edit anything".
    assert b"permission to view or edit anything" in client.get(reverse("admin:index")).content


def test_staff_who_can_see_something_in_the_admin_get_the_link(client):
    links = nav_links(client, "auditor", "smtpsettings.view_smtpsettingschange", staff=True)
    assert reverse("admin:index") in links
    index = client.get(reverse("admin:index")).content.decode()
    assert reverse("admin:smtpsettings_smtpsettingschange_changelist") in index


def test_no_admin_link_without_staff_status_whatever_the_permissions(client):
    links = nav_links(client, "clerk", "smtpsettings.view_smtpsettingschange")
    assert reverse("admin:index") not in links
