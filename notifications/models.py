from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone


class Category(models.TextChoices):
    INVITATION = "invitation", "Invitation"
    NOTIFICATION = "notification", "Notification"
    TEST = "test", "Test"
    OTHER = "other", "Other"


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"  # waiting for a worker, or for its next retry
    SENDING = "sending", "Sending"  # claimed by a worker until lease_until
    SENT = "sent", "Sent"  # the server accepted it for at least one recipient
    FAILED = "failed", "Failed"  # refused for good, or retried until the window closed
    CANCELLED = "cancelled", "Cancelled"


class OutboundEmail(models.Model):
    """One message the product sends, stored before any SMTP server hears of it."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    category = models.CharField(max_length=20, choices=Category.choices, default=Category.OTHER)
    cause_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.SET_NULL)
    cause_id = models.CharField(max_length=64, blank=True)
    cause = GenericForeignKey("cause_type", "cause_id")

    message_id = models.CharField(max_length=255, db_index=True)
    subject = models.CharField(max_length=255, blank=True)
    envelope_from = models.CharField(max_length=254)
    # [{"address": "...", "status": "pending" | "sent" | "refused", "reply": "250 ..."}]
    recipients = models.JSONField()
    to_text = models.TextField(blank=True)  # the addresses, lower case, for searching
    batch = models.CharField(max_length=32, blank=True, db_index=True)  # one send_messages() call
    data = models.BinaryField()  # the whole message as it goes over the wire

    status = models.CharField(
        max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="outbox_due")]
        permissions = [("manage_outboundemail", "Can retry and cancel outbound e-mail")]

    def __str__(self) -> str:
        return f"{self.subject or '(no subject)'} to {self.recipient_list}"

    @property
    def recipient_list(self) -> str:
        return ", ".join(entry["address"] for entry in self.recipients)


class DeliveryAttempt(models.Model):
    """One try at delivering one message: when, how far it got, what the server said."""

    email = models.ForeignKey(OutboundEmail, on_delete=models.CASCADE, related_name="history")
    at = models.DateTimeField(default=timezone.now)
    worker = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=20)  # "sent", "partly sent", "retry", "failed"
    step = models.CharField(max_length=20, blank=True)
    reply = models.TextField(blank=True)
    advice = models.TextField(blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.outcome} at {self.step}: {self.reply}"
