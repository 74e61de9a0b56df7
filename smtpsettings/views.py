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
from .diagnostics import Diagnosis, send_test_email
from .forms import RecipientForm, SmtpSettingsForm
from .hostnames import unicode_host
from .models import PasswordState, SmtpSettings
from .options import OptionsError

VIEW_PERMISSION = "smtpsettings.view_smtpsettings"
CHANGE_PERMISSION = "smtpsettings.change_smtpsettings"
PRESENTED = "smtpsettings.presented_certificate"  # session key for the trust flow


@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def smtp_settings_page(request: HttpRequest) -> HttpResponse:
    can_change = request.user.has_perm(CHANGE_PERMISSION)
    recipient_form = RecipientForm(initial={"test_to": request.user.email})
    diagnosis = None
    if request.method == "POST":
        if not can_change:
            raise PermissionDenied
        form = SmtpSettingsForm(request.POST, instance=store.load())
        if request.POST.get("action") == "test":
            recipient_form = RecipientForm(request.POST)
            if form.is_valid() and recipient_form.is_valid():
                diagnosis = _run_test(request, form, recipient_form.cleaned_data["test_to"])
        elif form.is_valid():
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
    context = _page_context(form, can_change)
    context.update(recipient_form=recipient_form, diagnosis=diagnosis)
    return render(request, "smtpsettings/settings.html", context)


def _run_test(request: HttpRequest, form: SmtpSettingsForm, recipient: str) -> Diagnosis:
    diagnosis = send_test_email(form.candidate(), recipient)
    problem = diagnosis.problem
    if problem and problem.kind == "untrusted" and problem.certificate_pem:
        request.session[PRESENTED] = {
            "pem": problem.certificate_pem,
            "sha256": problem.certificate.sha256,
            "server": f"{form.instance.host}:{form.instance.port}",
        }
    return diagnosis


@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def trust_certificate(request: HttpRequest) -> HttpResponse:
    """Show the certificate the server presented in the last test; store it on confirmation."""
    presented = request.session.get(PRESENTED)
    if not presented:
        messages.info(request, "Send a test e-mail first: this page trusts what it presents.")
        return redirect("smtpsettings:page")
    if request.method == "POST":
        if request.POST.get("sha256") != presented["sha256"]:
            messages.error(request, "The certificate changed in the meantime; test again.")
            return redirect("smtpsettings:page")
        record = store.load()
        before = store.snapshot(record)
        record.trusted_certificate = presented["pem"]
        store.save(
            record,
            before,
            actor=request.user,
            actor_name=request.user.get_username(),
            source="web page",
        )
        del request.session[PRESENTED]
        messages.success(
            request,
            f"The certificate with SHA-256 {presented['sha256']} is now trusted for this server, "
            "with verification still on. Send the test e-mail again.",
        )
        return redirect("smtpsettings:page")
    certificate = parse_pem_bundle(presented["pem"])[0]
    return render(
        request,
        "smtpsettings/trust.html",
        {"certificate": certificate, "presented": presented, "saved": store.load()},
    )


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
    # Read afresh: validating a form changes its instance in memory.
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
