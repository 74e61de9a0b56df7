"""The Outbox page: counts, filters, search, attempt history, retry, cancel, purge."""

import datetime
import io

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from notifications.delivery import Courier
from notifications.models import OutboundEmail, Status
from tests.conftest import make_user
from tests.outbox import point_settings_at, queue
from tests.smtpservers import TEST_HOST, Recorder, free_port, require_test_host, smtp_server

URL = "/outbox/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _test_host(settings):
    require_test_host()
    settings.OUTBOX_RETRY_FIRST_DELAY = 0


def test_outbox_needs_sign_in_and_permission(client):
    assert client.get(URL).status_code == 302
    client.force_login(make_user("nobody"))
    assert client.get(URL).status_code == 403
    client.force_login(make_user("viewer", "notifications.view_outboundemail"))
    assert client.get(URL).status_code == 200


def test_counts_filters_search_and_bulk_progress(admin_client):
    recorder = Recorder(refuse_recipients={"nobody@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(4, prefix="Welcome")
        queue(1, recipients=("nobody@example.com",), prefix="Lost")
        Courier().drain()
    queue(1, recipients=("later@example.com",), prefix="Waiting")
    page = admin_client.get(URL).content.decode()
    assert 'Sent <span class="count">4</span>' in page
    assert 'Failed <span class="count">1</span>' in page
    assert 'Queued <span class="count">1</span>' in page
    assert "4 of 4 delivered, 0 failed" in page
    failed = table(admin_client.get(URL, {"status": "failed"}))
    assert "Lost 0" in failed and "Welcome" not in failed
    assert "550 5.1.1" in failed
    found = table(admin_client.get(URL, {"q": "LATER@example"}))
    assert "Waiting 0" in found and "Welcome" not in found
    assert "Welcome" not in table(admin_client.get(URL, {"category": "invitation"}))
    assert "Welcome" in table(admin_client.get(URL, {"category": "other"}))


def table(response) -> str:
    return response.content.decode().split('<table class="list')[1]


def test_detail_shows_recipients_and_attempt_history(admin_client):
    recorder = Recorder(data_replies=["451 4.3.0 Try again later"])
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1, recipients=("a@example.com",))
        Courier().drain()
        Courier().drain()
    email = OutboundEmail.objects.get()
    html = admin_client.get(f"{URL}{email.pk}/").content.decode()
    attempts = html.split('id="attempts"')[1]
    assert attempts.index("retry") < attempts.index("sent")
    assert "451 4.3.0 Try again later" in attempts
    assert "asked to try again later" in attempts
    assert email.message_id.replace("<", "&lt;").replace(">", "&gt;") in html
    assert "a@example.com" in html.split('id="recipients"')[1]


@pytest.mark.django_db(transaction=True)
def test_retry_a_failed_message_and_it_is_delivered(admin_client):
    recorder = Recorder(refuse_sender="553 5.7.1 Not allowed")
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1)
        Courier().drain()
        email = OutboundEmail.objects.get()
        assert email.status == Status.FAILED
        recorder.refuse_sender = None  # the administrator fixed the sender
        DBTaskResult.objects.all().delete()  # a worker took the first wake-up
        response = admin_client.post(f"{URL}{email.pk}/retry/", follow=True)
        assert "It will be sent again shortly." in response.content.decode()
        assert DBTaskResult.objects.count() == 1  # a worker is woken
        Courier().drain()
    email.refresh_from_db()
    assert email.status == Status.SENT and len(server.messages) == 1


def test_cancel_a_waiting_message(admin_client):
    point_settings_at(TEST_HOST, free_port())
    queue(1)
    email = OutboundEmail.objects.get()
    admin_client.post(f"{URL}{email.pk}/cancel/")
    email.refresh_from_db()
    assert email.status == Status.CANCELLED
    assert Courier().drain() == 0  # a cancelled message is never claimed
    response = admin_client.post(f"{URL}{email.pk}/cancel/", follow=True)
    assert "Only waiting mail can be cancelled." in response.content.decode()


def test_actions_need_the_manage_permission(client):
    point_settings_at(TEST_HOST, free_port())
    queue(1)
    email = OutboundEmail.objects.get()
    client.force_login(make_user("viewer", "notifications.view_outboundemail"))
    assert "Retry now" not in client.get(f"{URL}{email.pk}/").content.decode()
    assert client.post(f"{URL}{email.pk}/cancel/").status_code == 403
    assert client.get(f"{URL}{email.pk}/cancel/").status_code in (403, 405)
    email.refresh_from_db()
    assert email.status == Status.QUEUED


def test_purge_deletes_only_sent_mail_past_retention():
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        queue(3)
        Courier().drain()
    queue(1)  # still queued: never purged
    old = timezone.now() - datetime.timedelta(days=40)
    OutboundEmail.objects.filter(
        pk__in=list(
            OutboundEmail.objects.filter(status=Status.SENT).values_list("pk", flat=True)[:2]
        )
    ).update(sent_at=old)
    out = io.StringIO()
    call_command("purge_outbox", stdout=out)
    assert "Deleted 2 sent e-mail(s) older than 30 day(s)." in out.getvalue()
    assert OutboundEmail.objects.count() == 2
    call_command("purge_outbox", "--days", "0", stdout=out)
    assert list(OutboundEmail.objects.values_list("status", flat=True)) == [Status.QUEUED]


def test_the_pager_keeps_the_filters(admin_client):
    point_settings_at(TEST_HOST, 2525)
    queue(60)
    page = admin_client.get("/outbox/?status=queued&q=bob%40example.com").content.decode()
    older = page.split('class="pager"')[1].split('rel="next">Older →')[0].rsplit('href="', 1)[1]
    assert older.startswith("?status=queued&amp;q=bob%40example.com&amp;older=")
    assert 'href="?status=queued&amp;q=bob%40example.com&amp;oldest=1">Oldest »' in page
