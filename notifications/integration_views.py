"""The Integrations pages (list, create, edit, enable or disable, test notification), the API
tokens page and the Events pages."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_http_methods, require_POST

from gatewaymgr.confirm import confirm_page

from . import keyset, tokens
from .events import CATALOG, labels
from .forms import IntegrationForm, TokenForm
from .models import ApiToken, Dispatch, Event, EventSource, Integration, Status
from .triggering import send_test

VIEW = "notifications.view_integration"
ADD = "notifications.add_integration"
CHANGE = "notifications.change_integration"
DELETE = "notifications.delete_integration"
VIEW_EVENTS = "notifications.view_event"
MANAGE_TOKENS = "notifications.manage_apitoken"
WAITING = (Status.QUEUED, Status.SENDING)


@login_required
@permission_required(VIEW, raise_exception=True)
def integration_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "notifications/integrations.html",
        {
            "rows": [
                (i, "All events" if i.all_events else ", ".join(labels(i.events)))
                for i in Integration.objects.all()
            ],
            "can_add": request.user.has_perm(ADD),
            "can_change": request.user.has_perm(CHANGE),
            "can_manage_tokens": request.user.has_perm(MANAGE_TOKENS),
        },
    )


@login_required
@permission_required(ADD, raise_exception=True)
@require_http_methods(["GET", "POST"])
def integration_create(request: HttpRequest) -> HttpResponse:
    form = IntegrationForm(
        request.POST if request.method == "POST" else None, initial={"enabled": True}
    )
    if request.method == "POST" and form.is_valid():
        integration = form.save()
        messages.success(request, f"Integration {integration.name} created.")
        return redirect("integrations:edit", pk=integration.pk)
    return render(
        request, "notifications/integration_form.html", {"form": form, "can_change": True}
    )


@login_required
@permission_required(VIEW, raise_exception=True)
@require_http_methods(["GET", "POST"])
def integration_edit(request: HttpRequest, pk: int) -> HttpResponse:
    integration = get_object_or_404(Integration, pk=pk)
    can_change = request.user.has_perm(CHANGE)
    if request.method == "POST":
        if not can_change:
            raise PermissionDenied
        form = IntegrationForm(request.POST, instance=integration)
        if form.is_valid():
            form.save()
            messages.success(request, f"Integration {integration.name} saved.")
            return redirect("integrations:edit", pk=integration.pk)
    else:
        form = IntegrationForm(instance=integration)
    if not can_change:
        for field in form.fields.values():
            field.disabled = True
    return render(
        request,
        "notifications/integration_form.html",
        {
            "form": form,
            "integration": integration,
            "can_change": can_change,
            "can_delete": request.user.has_perm(DELETE),
            "last_test": last_test(integration),
        },
    )


@login_required
@permission_required(DELETE, raise_exception=True)
@require_http_methods(["GET", "POST"])
def integration_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """Asks first (GET), then deletes (POST). Its past events and their e-mails stay: each
    dispatch keeps the integration's name and its e-mail, only the link to it goes."""
    integration = get_object_or_404(Integration, pk=pk)
    if request.method == "GET":
        sent = integration.dispatches.count()
        return confirm_page(
            request,
            question=f"Delete the integration {integration.name}?",
            consequences=[
                f"Its {len(integration.recipients)} recipient(s) get no more notifications "
                "from it; it cannot be undone. To pause it instead, disable it.",
                f"Its past events keep what they sent ({sent} e-mail(s)): the Events page and "
                "the Outbox still show them, marked with the integration's name as deleted.",
            ],
            confirm_label="Delete the integration",
            back_url=reverse("integrations:edit", args=[integration.pk]),
            back_label="Keep it",
        )
    name = integration.name
    integration.delete()  # Dispatch.integration is SET_NULL; integration_name and email stay
    messages.success(request, f"Integration {name} deleted. Its past events keep what they sent.")
    return redirect("integrations:list")


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def integration_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    integration = get_object_or_404(Integration, pk=pk)
    integration.enabled = request.POST.get("enabled") == "on"
    integration.save(update_fields=["enabled", "updated_at"])
    state = "enabled" if integration.enabled else "disabled: it gets no notifications"
    messages.success(request, f"Integration {integration.name} is {state}.")
    return redirect("integrations:list")


@login_required
@permission_required(CHANGE, raise_exception=True)
@require_POST
def integration_test(request: HttpRequest, pk: int) -> HttpResponse:
    integration = get_object_or_404(Integration, pk=pk)
    send_test(integration, request.user)
    messages.success(
        request,
        f"Test notification queued for {len(integration.recipients)} recipient(s). "
        "Its delivery status appears below.",
    )
    return redirect("integrations:edit", pk=pk)


@login_required
@permission_required(VIEW, raise_exception=True)
@xframe_options_sameorigin
@never_cache
def test_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The last test notification's delivery, in a frame of the integration's page that
    reloads itself while the message waits, so the page needs no JavaScript."""
    integration = get_object_or_404(Integration, pk=pk)
    dispatch = last_test(integration)
    email = dispatch.email if dispatch else None
    return render(
        request,
        "notifications/test_status.html",
        {
            "integration": integration,
            "dispatch": dispatch,
            "email": email,
            "waiting": email is not None and email.status in WAITING,
        },
    )


def last_test(integration: Integration) -> Dispatch | None:
    return (
        integration.dispatches.filter(event__source=EventSource.TEST)
        .select_related("event", "email")
        .order_by("-id")
        .first()
    )


@login_required
@permission_required(MANAGE_TOKENS, raise_exception=True)
@require_http_methods(["GET", "POST"])
@never_cache  # the new token is in the response
def token_page(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST if request.method == "POST" else None)
    secret = None
    created = None
    if request.method == "POST" and form.is_valid():
        if ApiToken.objects.filter(nonce=form.cleaned_data["nonce"]).exists():
            messages.info(
                request,
                "This form already created its token, whose secret was shown once. "
                "If it was not copied, revoke it and create another.",
            )
            return redirect("integrations:tokens")
        # Shown in this response only: it is stored as a hash, never in a session or a cookie.
        created, secret = tokens.create(
            form.cleaned_data["name"], request.user, form.cleaned_data["nonce"]
        )
        form = TokenForm()
    return render(
        request,
        "notifications/tokens.html",
        {
            "form": form,
            "tokens": ApiToken.objects.select_related("created_by"),
            "secret": secret,
            "created": created,
        },
    )


@login_required
@permission_required(MANAGE_TOKENS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Asks first (GET), then revokes (POST)."""
    token = get_object_or_404(ApiToken, pk=pk)
    if request.method == "GET":
        if not token.active:
            messages.info(request, f"Token {token} was already revoked.")
            return redirect("integrations:tokens")
        return confirm_page(
            request,
            question=f"Revoke the API token {token.name}?",
            consequences=[
                f"Requests with it ({token.prefix}…) get 401 at once; it cannot be undone.",
                "The programs that use it need a new token.",
            ],
            confirm_label="Revoke the token",
            back_url=reverse("integrations:tokens"),
            back_label="Keep it",
        )
    if tokens.revoke(token):
        messages.success(request, f"Token {token} revoked: requests with it now get 401.")
    else:
        messages.info(request, f"Token {token} was already revoked.")
    return redirect("integrations:tokens")


@login_required
@permission_required(VIEW_EVENTS, raise_exception=True)
def event_list(request: HttpRequest) -> HttpResponse:
    event_type = request.GET.get("type", "")
    source = request.GET.get("source", "")
    events = Event.objects.all()
    if event_type in CATALOG:
        events = events.filter(type=event_type)
    if source in EventSource.values:
        events = events.filter(source=source)
    # Of each dispatch only what the list shows: the integration's name and the e-mail's status.
    dispatches = Dispatch.objects.select_related("email").only(
        "event_id", "integration_name", "email__status"
    )
    page = keyset.page(
        events.prefetch_related(Prefetch("dispatches", queryset=dispatches)),
        request.GET,
        keep=("type", "source"),
    )
    return render(
        request,
        "notifications/events.html",
        {
            "page": page,
            "type": event_type,
            "source": source,
            "types": list(CATALOG.values()),
            "EventSource": EventSource,
        },
    )


@login_required
@permission_required(VIEW_EVENTS, raise_exception=True)
def event_detail(request: HttpRequest, pk: int) -> HttpResponse:
    event = get_object_or_404(Event, pk=pk)
    spec = CATALOG.get(event.type)
    return render(
        request,
        "notifications/event_detail.html",
        {
            "event": event,
            "spec": spec,
            # In catalog order; a type no longer in the catalog shows its payload as stored.
            "fields": [(f.name, event.payload.get(f.name)) for f in spec.fields]
            if spec
            else sorted(event.payload.items()),
            "dispatches": event.dispatches.select_related("integration", "email"),
            "can_view_outbox": request.user.has_perm("notifications.view_outboundemail"),
        },
    )
