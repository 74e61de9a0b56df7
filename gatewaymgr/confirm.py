"""The confirmation page that comes before every revoke, cancel and delete in the console."""

from __future__ import annotations

from collections.abc import Sequence

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def confirm_page(
    request: HttpRequest,
    *,
    question: str,
    consequences: Sequence[str],
    confirm_label: str,
    back_url: str,
    back_label: str,
) -> HttpResponse:
    """The page a row's Revoke, Cancel or Delete leads to (a GET, which changes nothing); its
    button POSTs to the same URL, which acts. No script is needed to ask first."""
    return render(
        request,
        "console/confirm.html",
        {
            "question": question,
            "consequences": consequences,
            "confirm_label": confirm_label,
            "back_url": back_url,
            "back_label": back_label,
        },
    )
