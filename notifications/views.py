from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.http import require_POST

from . import outbox
from .models import BodyUnavailable, Category, OutboundEmail, Status

VIEW = "notifications.view_outboundemail"
MANAGE = "notifications.manage_outboundemail"


@login_required
@permission_required(VIEW, raise_exception=True)
def outbox_page(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    category = request.GET.get("category", "")
    query = request.GET.get("q", "").strip()
    emails = outbox.search(
        status if status in Status.values else "",
        category if category in Category.values else "",
        query,
    )
    page = Paginator(emails, 50).get_page(request.GET.get("page"))
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
            "can_manage": request.user.has_perm(MANAGE),
            "can_retry": not outbox.cannot_retry(email),
            "can_cancel": email.status in outbox.CANCELLABLE,
        },
    )


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
@require_POST
def outbox_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    email = get_object_or_404(OutboundEmail, pk=pk)
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
