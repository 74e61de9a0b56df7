"""A message the breaker fails at the end of its retry window counts in the delivery metrics
like any other failed attempt (it went through delivery.hold_queue, not the courier's record)."""

import datetime

import pytest
from django.utils import timezone

from notifications import deliverystats
from notifications.delivery import claim, hold_queue
from notifications.models import OutboundEmail, Status
from smtpsettings.problems import SmtpProblem
from tests.outbox import point_settings_at, queue

pytestmark = pytest.mark.django_db


def test_a_message_failed_by_the_breaker_is_counted(django_capture_on_commit_callbacks):
    point_settings_at("smtp.gatewaymgr.test", 2525)
    queue(1)
    OutboundEmail.objects.update(created_at=timezone.now() - datetime.timedelta(days=30))
    deliverystats.take()  # nothing counted before
    assert claim("w1", 10)
    problem = SmtpProblem("connect", "The server cannot be reached.", kind="unreachable")
    with django_capture_on_commit_callbacks(execute=True):
        hold_queue("w1", problem)
    assert OutboundEmail.objects.get().status == Status.FAILED
    counted = deliverystats.take()
    assert counted.tallies[(deliverystats.DELIVERIES, "failed|unreachable")] == 1
    assert counted.failure is not None and counted.failure.outcome == "failed"
