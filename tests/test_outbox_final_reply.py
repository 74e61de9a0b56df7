"""The Outbox keeps the server's real final reply for delivered mail (issue 13), such as
Postfix's "250 2.0.0 Ok: queued as 4Xyz", so an administrator can trace a message in the
relay's log. It was the constant "250 accepted"."""

from __future__ import annotations

import pytest

from notifications.delivery import Courier
from notifications.models import OutboundEmail, Status
from tests.outbox import point_settings_at, queue
from tests.smtpservers import Recorder, require_test_host, smtp_server

pytestmark = pytest.mark.django_db


class QueueIds(Recorder):
    """Answers the final dot like Postfix: with the queue ID of each message."""

    async def handle_DATA(self, server, session, envelope):
        await super().handle_DATA(server, session, envelope)
        return f"250 2.0.0 Ok: queued as 4Xyz{len(self.messages)}"


@pytest.fixture(autouse=True)
def _test_host(settings):
    require_test_host()
    settings.OUTBOX_RETRY_FIRST_DELAY = 0


def test_a_delivered_message_keeps_the_servers_final_reply(admin_client):
    with smtp_server(recorder=QueueIds()) as server:
        point_settings_at(server.host, server.port)
        queue(2, prefix="Welcome")
        Courier().drain()
    replies = {
        email.subject: [attempt.reply for attempt in email.history.all()]
        for email in OutboundEmail.objects.all()
    }
    assert sorted(replies.values()) == [
        ["250 2.0.0 Ok: queued as 4Xyz1"],
        ["250 2.0.0 Ok: queued as 4Xyz2"],
    ]
    email = OutboundEmail.objects.get(subject="Welcome 0")
    page = admin_client.get(f"/outbox/{email.pk}/").content.decode()
    assert email.history.get().reply in page
    assert "250 accepted" not in page


def test_a_partly_refused_message_keeps_the_final_reply_and_each_refusal():
    recorder = QueueIds(refuse_recipients={"gone@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1, recipients=("bob@example.com", "gone@example.com"))
        Courier().drain()
    email = OutboundEmail.objects.get()
    assert email.status == Status.SENT
    reply = email.history.get().reply
    assert reply.startswith("250 2.0.0 Ok: queued as 4Xyz1")
    assert "gone@example.com: 550 5.1.1 No such user" in reply
