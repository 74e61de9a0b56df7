from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods

from smtpsettings import store

from . import invitations
from .addresses import Invitee, first_problems
from .confirm import confirm_page
from .forms import AcceptInvitationForm, InviteForm
from .models import Invitation, InvitationStatus

VIEW_INVITATIONS = "gatewaymgr.view_invitation"
INVITE = "gatewaymgr.add_invitation"  # invite and resend
REVOKE = "gatewaymgr.change_invitation"


FAVICON = Path(__file__).parent / "static" / "gatewaymgr" / "favicon.ico"


@require_http_methods(["GET", "HEAD"])
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers and tools ask for whatever the page's <link rel=icon>."""
    response = HttpResponse(FAVICON.read_bytes(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response


USERS_PER_PAGE = 50


@login_required
@permission_required(VIEW_INVITATIONS, raise_exception=True)
@require_http_methods(["GET", "POST"])
def users_page(request: HttpRequest) -> HttpResponse:
    can_invite = request.user.has_perm(INVITE)
    form = InviteForm(request.user)
    if request.method == "POST":
        if not can_invite:
            raise PermissionDenied
        form = InviteForm(request.user, request.POST)
        if form.is_valid():
            refused = _invite(request, form)
            problems = [str(p) for p in form.problems] + [text for _, text in refused]
            if not problems:
                return redirect("users")
            # Leave only what still needs attention in the box, each with its reason.
            rest = [p.entry for p in form.problems] + [
                f"{i.name} <{i.email}>" if i.name else i.email for i, _ in refused
            ]
            form = InviteForm(
                request.user, initial={**form.cleaned_data, "addresses": "\n".join(rest)}
            )
            form.address_problems = first_problems(problems)
    else:
        invitations.resume_stalled_batches()  # a batch whose worker died goes on
    status = request.GET.get("status", "")
    status = status if status in InvitationStatus.values else ""
    page = invitations.invitation_page(status, request.GET.get("older", ""))
    delivery = invitations.delivery_of(page.rows)
    for invitation in page:
        invitation.delivery = delivery.get(invitation.pk)
    counts = invitations.counts_by_status()
    return render(
        request,
        "invitations/users.html",
        {
            "form": form,
            "can_invite": can_invite,
            "can_revoke": request.user.has_perm(REVOKE),
            "can_see_outbox": request.user.has_perm("notifications.view_outboundemail"),
            "page": page,
            "status": status,
            "statuses": [
                (value, label, _count_text(counts[value]))
                for value, label in InvitationStatus.choices
            ],
            "batches": invitations.recent_batches(),
            "smtp_ready": bool(store.load().host),
            "users": _users_page(request) if request.user.has_perm("auth.view_user") else None,
        },
    )


def _invite(request: HttpRequest, form: InviteForm) -> list[tuple[Invitee, str]]:
    """Invite what the form holds: within the request up to INLINE_MAX addresses, else saved
    for a worker. The addresses refused at once, with their reasons."""
    options = {
        "groups": form.cleaned_data["groups"],
        "valid_days": form.cleaned_data["valid_days"],
        "inviter": request.user,
    }
    if len(form.invitees) > invitations.INLINE_MAX:
        batch = invitations.submit(form.invitees, **options)
        messages.success(
            request,
            f"Inviting {batch.total:,} addresses in the background: the progress shows under "
            "Invitations, and the e-mails go to the outbox as they are invited.",
        )
        return []
    report = invitations.invite(form.invitees, **options)
    _report_invite(request, report)
    return report.refused


def _count_text(count: int) -> str:
    return f"{invitations.COUNT_CAP:,}+" if count > invitations.COUNT_CAP else f"{count:,}"


def _users_page(request: HttpRequest) -> Page:
    User = get_user_model()
    users = User.objects.order_by(User.USERNAME_FIELD, "pk").prefetch_related("groups")
    return Paginator(users, USERS_PER_PAGE).get_page(request.GET.get("users_page"))


def _report_invite(request: HttpRequest, report: invitations.InviteReport) -> None:
    if report.invited:
        messages.success(
            request,
            f"Invited {_listed(report.invited)}. The e-mails are in the outbox.",
        )
    if report.reinvited:
        messages.success(
            request,
            f"Sent a new link to {_listed(report.reinvited)}, already invited. "
            "Their earlier links no longer work.",
        )


def _listed(rows: list[Invitation], shown: int = 10) -> str:
    """ "3: a@x, b@x, c@x", the addresses cut after `shown`."""
    more = " …" if len(rows) > shown else ""
    return f"{len(rows):,}: {', '.join(i.email for i in rows[:shown])}{more}"


@login_required
@require_http_methods(["GET", "POST"])
def invitation_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    invitation = get_object_or_404(Invitation, pk=pk)
    if request.method == "GET":
        # Only revoking asks first, on a page of its own; resending changes nothing that
        # cannot be resent again.
        if action != "revoke":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(REVOKE):
            raise PermissionDenied
        return _confirm_revoke(request, invitation)
    if action == "resend":
        if not request.user.has_perm(INVITE):
            raise PermissionDenied
        try:
            resent = invitations.resend(invitation, request.user)
        except invitations.GroupsNotGrantable as refused:
            messages.error(
                request,
                f"You cannot resend the invitation for {invitation.email}: it gives "
                f"{invitations.quoted_names(refused.groups)}, with permissions you do not hold "
                "yourself. Ask someone who holds them to resend it.",
            )
            return redirect("users")
        if resent:
            messages.success(
                request,
                f"Sent a new link to {invitation.email}, valid for {invitation.valid_days} "
                "days. The earlier link no longer works.",
            )
        else:
            messages.error(request, "Only a pending or expired invitation can be resent.")
    elif action == "revoke":
        if not request.user.has_perm(REVOKE):
            raise PermissionDenied
        if invitations.revoke(invitation, request.user):
            messages.success(request, f"Revoked the invitation for {invitation.email}.")
        else:
            messages.error(request, "Only a pending or expired invitation can be revoked.")
    return redirect("users")


def _confirm_revoke(request: HttpRequest, invitation: Invitation) -> HttpResponse:
    if invitation.status not in (InvitationStatus.PENDING, InvitationStatus.EXPIRED):
        messages.error(request, "Only a pending or expired invitation can be revoked.")
        return redirect("users")
    return confirm_page(
        request,
        question=f"Revoke the invitation for {invitation.email}?",
        consequences=[
            "The link in the invitation stops working at once; it cannot be undone.",
            "If its e-mail is still waiting in the outbox, it is not sent.",
            "You can invite the same address again later.",
        ],
        confirm_label="Revoke the invitation",
        back_url=reverse("users"),
        back_label="Keep it",
    )


def no_referrer(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """For a response whose URL holds an invitation token: a browser must not pass that URL
    on as Referer, neither to the static files nor to any other site."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "no-referrer"
        return response

    return wrapped


def _token_cookie(pk: int) -> str:
    return f"invitation_{pk}"  # one per invitation: two links open in two tabs do not mix


@never_cache
@no_referrer
@require_http_methods(["GET", "POST"])
def accept_invitation(request: HttpRequest, token: str) -> HttpResponse:
    """The link from the e-mail. Its URL holds the token, so the form lives at a URL that
    does not: the token moves into a cookie for /invite/ only (never stored on the server) and
    the browser is sent on, as Django's password reset does. The form's page cannot carry
    "no-referrer" itself: browsers then send "Origin: null" with the POST, which the CSRF check
    rightly refuses."""
    invitation = invitations.find(token)
    if invitation is None or invitation.status != InvitationStatus.PENDING:
        return _unusable(request, invitation)
    response = redirect("join_invitation", pk=invitation.pk)
    response.set_cookie(
        _token_cookie(invitation.pk),
        token,
        expires=invitation.expires_at,
        path=reverse("join_invitation", args=[invitation.pk]),
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )
    return response


@never_cache
@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def join_invitation(request: HttpRequest, pk: int) -> HttpResponse:
    """The accept form, for the invitation whose link this browser opened."""
    token = request.COOKIES.get(_token_cookie(pk), "")
    invitation = invitations.find(token)
    if invitation is None or invitation.pk != pk:
        return _unusable(request, None, status="reopen")
    if invitation.status != InvitationStatus.PENDING:
        return _unusable(request, invitation)
    if request.method == "POST":
        form = AcceptInvitationForm(invitation, request.POST)
        if form.is_valid():
            try:
                user = invitations.accept(
                    token,
                    name=form.cleaned_data["name"],
                    username=form.cleaned_data["username"],
                    password=form.cleaned_data["password1"],
                )
            except invitations.InvitationUnusable:
                return _unusable(request, invitations.find(token))
            except invitations.UsernameTaken:
                form.add_error("username", "This user name was just taken. Choose another.")
            else:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
                messages.success(request, f"Welcome to Gateway Manager, {user.get_username()}.")
                response = redirect("home")
                response.delete_cookie(_token_cookie(pk), path=request.path)
                return response
    else:
        form = AcceptInvitationForm(
            invitation,
            initial={
                "name": invitation.name,
                "username": invitations.suggest_username(invitation.email),
            },
        )
    return render(request, "invitations/accept.html", {"form": form, "invitation": invitation})


@no_referrer
def _unusable(
    request: HttpRequest, invitation: Invitation | None, status: str = ""
) -> HttpResponse:
    """410 Gone, saying what happened to the invitation and whom to ask."""
    return render(
        request,
        "invitations/unusable.html",
        {
            "invitation": invitation,
            "status": status or (invitation.status if invitation else "unknown"),
        },
        status=410,
    )
