from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from . import store
from .certificates import InvalidCertificate, parse_pem_bundle
from .forms import SmtpSettingsForm
from .hostnames import unicode_host
from .models import PasswordState, SmtpSettings
from .options import OptionsError

CHANGE_PERMISSION = "smtpsettings.change_smtpsettings"


@login_required
@permission_required("smtpsettings.view_smtpsettings", raise_exception=True)
@require_http_methods(["GET", "POST"])
def smtp_settings_page(request: HttpRequest) -> HttpResponse:
    can_change = request.user.has_perm(CHANGE_PERMISSION)
    if request.method == "POST":
        if not can_change:
            raise PermissionDenied
        form = SmtpSettingsForm(request.POST, instance=store.load())
        if form.is_valid():
            result = form.save(
                actor=request.user, actor_name=request.user.get_username(), source="web page"
            )
            _report_save(request, result)
            return redirect("smtpsettings:page")
    else:
        form = SmtpSettingsForm(instance=store.load())
    if not can_change:
        for field in form.fields.values():
            field.disabled = True
    return render(request, "smtpsettings/settings.html", _page_context(form, can_change))


def _report_save(request: HttpRequest, result: store.SaveResult) -> None:
    if not result.changes:
        messages.info(request, "Nothing changed.")
        return
    changed = ", ".join(change["label"] for change in result.changes)
    messages.success(request, f"SMTP settings saved. Changed: {changed}.")
    if result.password_dropped:
        messages.warning(
            request,
            "The stored password was removed because the server, port or user changed. "
            "Enter the password again if this server needs one.",
        )


def _page_context(form: SmtpSettingsForm, can_change: bool) -> dict[str, Any]:
    # Read afresh: validating an invalid form changes its instance in memory.
    saved: SmtpSettings = store.load()
    context: dict[str, Any] = {
        "form": form,
        "saved": saved,
        "can_change": can_change,
        "password_state": saved.password_state,
        "PasswordState": PasswordState,
        "history": store.recent_changes(),
        "plan": None,
        "plan_problem": None,
        "certificates": [],
        "host_unicode": unicode_host(saved.host),
    }
    if saved.host:
        try:
            context["plan"] = saved.connection_plan()
        except OptionsError as error:
            context["plan_problem"] = "The stored options are no longer valid: " + str(error)
    if saved.trusted_certificate:
        try:
            context["certificates"] = parse_pem_bundle(saved.trusted_certificate)
        except InvalidCertificate as error:
            context["certificate_problem"] = str(error)
    return context
