from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from . import store, typed_password
from .certificates import InvalidCertificate, parse_pem_bundle
from .expiry import expiring_soon
from .forms import SECRET_FIELDS, RecipientForm, SmtpSettingsForm, form_data
from .hostnames import display_host_port, unicode_host
from .models import TEST_RUN_EXTRAS, PasswordState, SmtpSettings, SmtpTestRun
from .options import OptionsError
from .providers import CREDENTIAL_LABELS
from .tasks import run_smtp_test

VIEW_PERMISSION = "smtpsettings.view_smtpsettings"
CHANGE_PERMISSION = "smtpsettings.change_smtpsettings"
PRESENTED = "smtpsettings.trust_run"  # session key: the test run whose certificate to trust
CA_REFUSAL = (
    "This certificate is a CA certificate (CA:TRUE). Trusting it here would accept every "
    "certificate it signs, so this page refuses it. Ask the server's administrator for the "
    "server's own certificate; or, if you mean to trust that CA, paste it into Trusted "
    "certificate knowingly."
)


@sensitive_post_parameters(*SECRET_FIELDS)
@login_required
@permission_required(VIEW_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def smtp_settings_page(request: HttpRequest) -> HttpResponse:
    can_change = request.user.has_perm(CHANGE_PERMISSION)
    recipient_form = RecipientForm(initial={"test_to": request.user.email})
    test_run = None
    if request.method == "POST":
        if not can_change:
            raise PermissionDenied
        form = SmtpSettingsForm(request.POST, request.FILES, instance=store.load())
        if request.POST.get("action") == "test":
            recipient_form = RecipientForm(request.POST)
            if form.is_valid() and recipient_form.is_valid():
                test_run = _start_test(request, form, recipient_form.cleaned_data["test_to"])
        elif form.is_valid():
            adopted = form.adopt_password(typed_password.take(request.session, form.instance))
            result = form.save(
                actor=request.user, actor_name=request.user.get_username(), source="web page"
            )
            _report_save(request, result, adopted_typed_password=adopted)
            for warning in form.warnings:
                messages.warning(request, warning)
            return redirect("smtpsettings:page")
    else:
        form = SmtpSettingsForm(instance=store.load())
    if not can_change:
        for field in form.fields.values():
            field.disabled = True
    context = _page_context(form, can_change)
    context.update(
        recipient_form=recipient_form,
        test_run=test_run,
        typed_password_held=typed_password.is_held(request.session),
        typed_password_minutes=typed_password.HOLD_SECONDS // 60,
    )
    return render(request, "smtpsettings/settings.html", context)


def _start_test(request: HttpRequest, form: SmtpSettingsForm, recipient: str) -> SmtpTestRun:
    """Store the form's settings for a worker to test: no web request talks to SMTP."""
    candidate = form.candidate()
    if form.cleaned_data["password"]:
        typed_password.hold(request.session, candidate)
    run = SmtpTestRun.objects.create(
        requested_by=request.user,
        recipient=recipient,
        config={field: getattr(candidate, field) for field in store.EDITABLE},
        password_token=candidate.password_token,
        secrets={field: getattr(candidate, field) for field in TEST_RUN_EXTRAS},
    )
    transaction.on_commit(lambda: run_smtp_test.enqueue(run.pk))
    return run


@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
@xframe_options_sameorigin
def test_run_result(request: HttpRequest, pk: int) -> HttpResponse:
    """The result of one test, shown in a frame of the settings page; it reloads itself until
    a worker has run the test, so the page works without JavaScript."""
    run = get_object_or_404(SmtpTestRun, pk=pk, requested_by=request.user)
    if run.finished_at and run.presented_certificate:
        request.session[PRESENTED] = run.pk  # what "Trust this certificate" offers
    waiting = (timezone.now() - run.created_at).total_seconds()
    return render(
        request,
        "smtpsettings/test_run.html",
        {"run": run, "diagnosis": run.result, "stalled": not run.finished_at and waiting > 15},
    )


@sensitive_post_parameters("password")
@login_required
@permission_required(CHANGE_PERMISSION, raise_exception=True)
@require_http_methods(["GET", "POST"])
def trust_certificate(request: HttpRequest) -> HttpResponse:
    """Trust the certificate the server presented in the last test, saved together with the
    values that were tested: trust is for exactly that certificate on exactly that server."""
    run = SmtpTestRun.objects.filter(
        pk=request.session.get(PRESENTED), requested_by=request.user
    ).first()
    if run is None or not run.presented_certificate:
        messages.info(request, "Send a test e-mail first: this page trusts what it presents.")
        return redirect("smtpsettings:page")
    certificate = parse_pem_bundle(run.presented_certificate)[0]
    saved = store.load()
    tested = {**run.config, "trusted_certificate": run.presented_certificate}
    form = SmtpSettingsForm(
        {**form_data(tested), "password": request.POST.get("password", "")}, instance=saved
    )
    if request.method == "POST":
        if certificate.is_ca:
            messages.error(request, CA_REFUSAL)
            return redirect("smtpsettings:page")
        if request.POST.get("sha256") != certificate.sha256:
            messages.error(request, "The certificate changed in the meantime; test again.")
            return redirect("smtpsettings:page")
        if form.is_valid():
            tested_record = SmtpSettings(**run.config)
            adopted = form.adopt_password(typed_password.take(request.session, tested_record))
            result = form.save(
                actor=request.user, actor_name=request.user.get_username(), source="web page"
            )
            del request.session[PRESENTED]
            lead = (
                f"The certificate with SHA-256 {certificate.sha256} is now trusted for "
                f"{display_host_port(run.config['host'], run.config['port'])}: only this exact "
                "certificate is accepted, with verification still on."
            )
            _report_save(request, result, adopted_typed_password=adopted, lead=lead)
            return redirect("smtpsettings:page")
    return render(
        request,
        "smtpsettings/trust.html",
        {
            "certificate": certificate,
            "CA_REFUSAL": CA_REFUSAL,
            "server": display_host_port(run.config["host"], run.config["port"]),
            "changes": store.differences(store.snapshot(saved), tested),
            "form": form,
            "username": run.config["username"],
            "password_held": typed_password.is_held(request.session),
        },
    )


def _report_save(
    request: HttpRequest,
    result: store.SaveResult,
    *,
    adopted_typed_password: bool = False,
    lead: str = "SMTP settings saved.",
) -> None:
    if not result.changes:
        messages.info(request, "Nothing changed.")
        return
    changed = ", ".join(change["label"] for change in result.changes)
    messages.success(request, f"{lead} Changed: {changed}.")
    if adopted_typed_password:
        messages.info(request, "The password you typed for the test was saved with them.")
    if result.password_dropped:
        messages.warning(request, store.dropped_password_text(result.password_dropped))
    for field, reasons in result.secrets_dropped.items():
        messages.warning(request, store.dropped_secret_text(field, reasons))


def _page_context(form: SmtpSettingsForm, can_change: bool) -> dict[str, Any]:
    # Read afresh: validating a form changes its instance in memory.
    saved: SmtpSettings = store.load()
    now = timezone.now()
    context: dict[str, Any] = {
        "form": form,
        "saved": saved,
        "can_change": can_change,
        "password_state": saved.password_state,
        "oauth_state": saved.secret_state("oauth_credential_token"),
        "oauth_info": saved.oauth_credential_info,
        "oauth_label": CREDENTIAL_LABELS.get(
            saved.oauth_credential_info.get("kind"), "a credential"
        ),
        "client_key_state": saved.secret_state("client_key_token"),
        "expiring": [
            {"credential": e.credential, "expires_at": e.expires_at, "days": e.days_left(now)}
            for e in expiring_soon(saved, now)
        ],
        "PasswordState": PasswordState,
        "history": store.recent_changes(),
        "plan": None,
        "plan_problem": None,
        "certificates": [],
        "host_unicode": unicode_host(saved.host),
    }
    if saved.host:
        try:
            plan = context["plan"] = saved.connection_plan()
        except OptionsError as error:
            context["plan_problem"] = "The stored options are no longer valid: " + str(error)
        else:
            missing = (
                plan.authenticates
                and not plan.uses_oauth
                and saved.password_state is PasswordState.NOT_SET
            )
            context["password_missing"] = missing
            context["plan_sentence"] = plan.describe(password_missing=missing)
    if saved.client_certificate:
        try:
            context["client_certificate"] = parse_pem_bundle(saved.client_certificate)[0]
        except InvalidCertificate as error:
            context["certificate_problem"] = str(error)
    if saved.trusted_certificate:
        try:
            context["certificates"] = parse_pem_bundle(saved.trusted_certificate)
        except InvalidCertificate as error:
            context["certificate_problem"] = str(error)
    return context
