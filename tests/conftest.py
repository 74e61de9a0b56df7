from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User

from tests.workers import workers  # noqa: F401  (a fixture: real task worker processes)


def make_user(username: str, *perms: str, superuser: bool = False) -> User:
    if superuser:
        return User.objects.create_superuser(username, f"{username}@example.com", "pw")
    user = User.objects.create_user(username, f"{username}@example.com", "pw")
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


@pytest.fixture
def admin_user(db) -> User:
    return make_user("alice", superuser=True)


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture(autouse=True)
def fresh_health_banner():
    """Each test computes the delivery health banner afresh: one cached by the test before
    (for HEALTH_CACHE_SECONDS) describes that test's database, not this one's."""
    from health.status import forget_cached

    forget_cached()
    yield
