from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from gatewaymgr.confirm import confirm_page

from . import keyset, outbox
from .models import BodyUnavailable, Category, OutboundEmail, Status

VIEW = "notifications.view_outboundemail"
MANAGE = "notifications.manage_outboundemail"


@login_required
@permission_required(VIEW, raise_exception=True)
def outbox_page(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    category = request.GET.get("category", "")
    query = request.GET.get("q", "").strip()
    emails = outbox.listing(
        status if status in Status.values else "",
        category if category in Category.values else "",
        query,
    )
    page = keyset.page(emails, request.GET, keep=("status", "category", "q"))
    return render(
        request,
        "notifications/outbox.html",
        {
            "page": page,
            "counts": outbox.counts_by_status(),
            "bulk": outbox.recent_bulk_sends(),
            "status": status,
            "category": category,
            "query": query,
            "Status": Status,
            "Category": Category,
        },
    )


@login_required
@permission_required(VIEW, raise_exception=True)
def outbox_detail(request: HttpRequest, pk: int) -> HttpResponse:
    email = get_object_or_404(OutboundEmail, pk=pk)
    body = body_state(email)
    return render(
        request,
        "notifications/outbox_detail.html",
        {
            "email": email,
            "body": body,
            "history": email.history.all(),
            "recipients": recipient_rows(email),
            "can_manage": request.user.has_perm(MANAGE),
            "can_retry": not outbox.cannot_retry(email),
            "can_cancel": email.status in outbox.CANCELLABLE,
        },
    )


def recipient_rows(email: OutboundEmail) -> list[dict[str, str]]:
    """Each recipient with the status to show: one still "pending" in a message that will
    never be sent (cancelled) reads "not sent"."""
    rows = []
    for entry in email.recipients:
        status = entry.get("status", "pending")
        if status == "pending" and email.status == Status.CANCELLED:
            status = "not sent"
        rows.append(
            {"address": entry["address"], "status": status, "reply": entry.get("reply", "")}
        )
    return rows


def body_state(email: OutboundEmail) -> str:
    """What the page says about the stored body. The body itself is never shown: the link
    in an invitation would let anyone who may view the outbox join."""
    try:
        size = len(email.message_bytes())
    except BodyUnavailable as error:
        return str(error)
    return f"Stored encrypted ({filesizeformat(size)}); removed once delivered."


@login_required
@permission_required(MANAGE, raise_exception=True)
@require_http_methods(["GET", "POST"])
def outbox_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    email = get_object_or_404(OutboundEmail, pk=pk)
    if request.method == "GET":
        # Cancelling asks first on a page of its own; retrying needs no second thought.
        if action == "cancel" and email.status in outbox.CANCELLABLE:
            return _confirm_cancel(request, email)
        if action == "cancel":
            messages.error(request, "Only waiting mail can be cancelled.")
        return redirect("notifications:detail", pk=pk)
    if action == "retry":
        done = outbox.retry(email)
        if not done:
            email.refresh_from_db()  # it may have changed meanwhile
        text = (
            "It will be sent again shortly."
            if done
            else outbox.cannot_retry(email) or "It changed meanwhile: see its status below."
        )
    elif action == "cancel":
        done = outbox.cancel(email)
        text = "Cancelled: it will not be sent." if done else "Only waiting mail can be cancelled."
    else:
        return redirect("notifications:detail", pk=pk)
    (messages.success if done else messages.error)(request, text)
    return redirect("notifications:detail", pk=pk)


def _confirm_cancel(request: HttpRequest, email: OutboundEmail) -> HttpResponse:
    count = len(email.recipients)
    return confirm_page(
        request,
        question=f"Cancel “{email.subject or '(no subject)'}”?",
        consequences=[
            f"It will not be sent to its {count} recipient{'s' if count != 1 else ''}: "
            f"{email.recipient_list}.",
            "It stays in the outbox as Cancelled; it cannot be sent again from here.",
        ],
        confirm_label="Cancel this e-mail",
        back_url=reverse("notifications:detail", args=[email.pk]),
        back_label="Keep it waiting",
    )
