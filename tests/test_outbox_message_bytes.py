"""The outbox writes a message's bytes with its own generator (notifications.backends
.message_bytes, faster): they must be exactly what Django's as_bytes() gives."""

import copy
import random

import pytest
from django.core.mail import EmailMessage, EmailMultiAlternatives

from notifications.backends import message_bytes

SUBJECTS = [
    "Hi",
    "Héllo wörld",
    "x" * 70,
    "a  b",
    " lead",
    "trail ",
    "tab\there",
    "long " * 30,
    "=?utf-8?q?x?=",
    "a" * 200,
    "日本語の件名です" * 5,
]


def messages(subject: str) -> list[EmailMessage]:
    rich = EmailMultiAlternatives(
        subject,
        "body\nFrom here\n" + "é" * 50 + "\n" + "x" * 1200,
        "Sëndér <s@example.com>",
        ["u@example.com", "Long Name " * 8 + "<v@example.com>", "ünï@exämple.com"],
        cc=["c@example.com"],
        reply_to=["r@example.com"],
        headers={"X-Custom": "v  v", "List-Unsubscribe": "<https://example.com/" + "u" * 80 + ">"},
    )
    rich.attach_alternative("<p>hi</p>", "text/html")
    rich.attach("a.txt", "attachment text", "text/plain")
    return [rich, EmailMessage(subject, "plain body", "s@example.com", ["t@example.com"])]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_the_bytes_are_django_s_own(subject):
    for message in messages(subject):
        mime = message.message()
        fresh = copy.deepcopy(mime)  # generating sets the boundary on the message
        random.seed(1)  # the same multipart boundary for both
        expected = mime.as_bytes(linesep="\r\n")
        random.seed(1)
        assert message_bytes(fresh) == expected


def test_a_boundary_found_in_the_text_is_drawn_again(monkeypatch):
    from notifications import backends

    draws = iter([1, 1, 2])
    monkeypatch.setattr(backends.random, "randrange", lambda _: next(draws))
    first = backends._MessageGenerator._make_boundary()
    assert backends._MessageGenerator._make_boundary(b"x--" + first.encode()) != first
