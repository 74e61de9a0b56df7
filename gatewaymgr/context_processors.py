"""Template context every console page gets."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject


def navigation(request: HttpRequest) -> dict:
    """`admin_link`: whether the Admin link leads somewhere for this user. Staff status alone
    opens an admin that may say only "You don't have permission to view or edit anything"."""

    def admin_has_something() -> bool:
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_staff and admin.site.get_app_list(request))

    return {"admin_link": SimpleLazyObject(admin_has_something)}
