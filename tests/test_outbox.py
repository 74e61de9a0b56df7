"""The outbox: messages are stored with what caused them and delivered by a courier."""

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django_tasks_db.models import DBTaskResult

from notifications.backends import queue_email
from notifications.delivery import Courier
from notifications.models import OutboundEmail, Status
from tests.outbox import OUTBOX, point_settings_at, queue
from tests.smtpservers import TEST_HOST, Recorder, free_port, require_test_host, smtp_server


@pytest.fixture(autouse=True)
def _test_host(settings):
    require_test_host()
    settings.OUTBOX_RETRY_FIRST_DELAY = 0  # retries are due at once


@pytest.mark.django_db(transaction=True)
def test_sending_stores_the_message_and_enqueues_delivery_on_commit(settings):
    settings.EMAIL_BACKEND = OUTBOX
    point_settings_at(TEST_HOST, 2525)
    with transaction.atomic():
        assert mail.send_mail("Hi", "Body", None, ["Bob <bob@example.com>"]) == 1
        assert DBTaskResult.objects.count() == 0  # nothing leaves before the commit
    (email,) = OutboundEmail.objects.all()
    assert email.status == Status.QUEUED and email.category == "other"
    assert email.envelope_from == "gateway@example.com"
    assert email.recipients == [{"address": "bob@example.com", "status": "pending", "reply": ""}]
    assert email.message_id.startswith("<") and email.message_id.encode() in email.message_bytes()
    assert DBTaskResult.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_sends_nothing():
    point_settings_at(TEST_HOST, 2525)
    with pytest.raises(RuntimeError), transaction.atomic():
        get_connection(OUTBOX).send_messages([EmailMessage("S", "B", None, ["a@example.com"])])
        raise RuntimeError("the invitation failed")
    assert OutboundEmail.objects.count() == 0
    assert DBTaskResult.objects.count() == 0


@pytest.mark.django_db
def test_category_and_cause_are_kept(admin_user):
    point_settings_at(TEST_HOST, 2525)
    email = queue_email(
        EmailMessage("Join us", "B", None, ["new@example.com"]),
        category="invitation",
        cause=admin_user,
    )
    email.refresh_from_db()
    assert email.category == "invitation"
    assert email.cause == User.objects.get(pk=admin_user.pk)


@pytest.mark.django_db
def test_courier_delivers_over_one_connection_and_records_each_attempt():
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        queue(25)
        assert Courier().drain(batch_size=10) == 25
    assert server.recorder.connections == 1 and len(server.messages) == 25
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {Status.SENT}
    stored = set(OutboundEmail.objects.values_list("message_id", flat=True))
    assert {m.message["Message-ID"] for m in server.messages} == stored
    email = OutboundEmail.objects.first()
    assert [a.outcome for a in email.history.all()] == ["sent"]
    assert email.recipients[0]["status"] == "sent" and email.sent_at


@pytest.mark.django_db
def test_451_then_250_is_delivered_on_retry():
    recorder = Recorder(data_replies=["451 4.3.0 Try again later"])
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1)
        courier = Courier()
        courier.drain()
        email = OutboundEmail.objects.get()
        assert email.status == Status.QUEUED and "451 4.3.0" in email.last_error
        courier.drain()
    email.refresh_from_db()
    assert email.status == Status.SENT and email.attempts == 2
    assert [(a.outcome, a.reply[:3]) for a in email.history.all()] == [
        ("retry", "451"),
        ("sent", "250"),
    ]
    assert len(server.messages) == 1


@pytest.mark.django_db
def test_one_refused_recipient_of_three_does_not_stop_the_others():
    recorder = Recorder(refuse_recipients={"b@example.com": "550 5.1.1 No such user"})
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1, recipients=("a@example.com", "b@example.com", "c@example.com"))
        Courier().drain()
    email = OutboundEmail.objects.get()
    assert email.status == Status.SENT
    assert {r["address"]: (r["status"], r["reply"]) for r in email.recipients} == {
        "a@example.com": ("sent", ""),
        "b@example.com": ("refused", "550 5.1.1 No such user"),
        "c@example.com": ("sent", ""),
    }
    assert server.messages[0].rcpt_tos == ["a@example.com", "c@example.com"]
    assert email.history.get().outcome == "partly sent"


@pytest.mark.django_db
def test_permanent_refusal_fails_with_the_servers_reply():
    recorder = Recorder(refuse_sender="553 5.7.1 Sender address rejected")
    with smtp_server(recorder=recorder) as server:
        point_settings_at(server.host, server.port)
        queue(1)
        Courier().drain()
    email = OutboundEmail.objects.get()
    assert email.status == Status.FAILED
    assert "553 5.7.1 Sender address rejected" in email.last_error
    assert "refused the sender address" in email.history.get().advice


@pytest.mark.django_db
def test_server_down_keeps_everything_queued_without_knocking_100_times():
    port = free_port()
    point_settings_at(TEST_HOST, port)
    queue(100)
    courier = Courier()
    assert courier.drain(batch_size=50) == 100
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {Status.QUEUED}
    assert "Nothing accepts connections" in OutboundEmail.objects.first().last_error
    with smtp_server(port=port) as server:
        courier.drain(batch_size=50)
    assert server.recorder.connections == 1
    ids = [m.message["Message-ID"] for m in server.messages]
    assert len(ids) == len(set(ids)) == 100
    assert set(OutboundEmail.objects.values_list("status", flat=True)) == {Status.SENT}


@pytest.mark.django_db
def test_retry_window_over_means_failed(settings):
    settings.OUTBOX_RETRY_HOURS = 0
    point_settings_at(TEST_HOST, free_port())
    queue(1)
    Courier().drain()
    email = OutboundEmail.objects.get()
    assert email.status == Status.FAILED
    assert email.recipients[0]["status"] == "refused"


@pytest.mark.django_db
def test_saving_the_smtp_settings_makes_waiting_messages_due_now(settings, admin_client):
    settings.OUTBOX_RETRY_FIRST_DELAY = 3600
    point_settings_at(TEST_HOST, free_port())
    queue(3)
    Courier().drain()
    assert (
        OutboundEmail.objects.filter(
            next_attempt_at__gt=OutboundEmail.objects.first().created_at
        ).count()
        == 3
    )
    from django.utils import timezone

    from smtpsettings import store
    from smtpsettings.forms import SmtpSettingsForm

    form = SmtpSettingsForm(
        {
            "sender_email": "gateway@example.com",
            "host": TEST_HOST,
            "port": "2526",
            "encryption": "auto",
            "options": '{"auto_tls": false}',
        },
        instance=store.load(),
    )
    assert form.is_valid(), form.errors
    form.save(actor=None, actor_name="test", source="test")
    assert OutboundEmail.objects.filter(next_attempt_at__lte=timezone.now()).count() == 3
