from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone

from smtpsettings import keyring

BODY_REMOVED = "Body removed after delivery: the message cannot be sent again."
BODY_UNREADABLE = (
    "The message cannot be decrypted with the current keys: the key ring changed since it was "
    "queued (SECRET_KEY or SMTP_ENCRYPTION_KEYS). Put the old key back into SECRET_KEY_FALLBACKS "
    "or SMTP_ENCRYPTION_KEYS and retry it, or send it anew."
)


class BodyUnavailable(Exception):
    """The message's body cannot be had: removed after delivery, or no key decrypts it."""


def seal(data: bytes) -> str:
    """A message as it is stored: encrypted with the key ring, so a copy of the database
    alone yields no invitation link."""
    return keyring.encrypt_bytes(data).decode("ascii")


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


class OutboundBatch(models.Model):
    """One send_messages() call of more than one message, such as a bulk invitation: what the
    "Bulk sends" box shows, without grouping the outbox."""

    key = models.CharField(max_length=32, unique=True)
    subject = models.CharField(max_length=255, blank=True)  # of its first message
    total = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.total} x {self.subject or '(no subject)'}"


class OutboundEmail(models.Model):
    """One message the product sends, stored before any SMTP server hears of it. Its body is
    an OutboundBody of its own, so that lists and counts never read it."""

    created_at = models.DateTimeField(default=timezone.now)
    category = models.CharField(max_length=20, choices=Category.choices, default=Category.OTHER)
    cause_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.SET_NULL)
    cause_id = models.CharField(max_length=64, blank=True)
    cause = GenericForeignKey("cause_type", "cause_id")

    message_id = models.CharField(max_length=255, db_index=True)
    subject = models.CharField(max_length=255, blank=True)
    envelope_from = models.CharField(max_length=254)
    # [{"address": "...", "status": "pending" | "sent" | "refused", "reply": "250 ..."}]
    recipients = models.JSONField()
    # The send_messages() call it came in with, when that stored more than one message.
    # Indexed with status below (the progress of a batch).
    batch = models.ForeignKey(
        OutboundBatch,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="emails",
        db_index=False,
    )

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_by = models.CharField(max_length=64, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="outbox_due"),
            # Newest first, for keyset pages: all, by status, by category.
            models.Index(fields=["created_at", "id"], name="outbox_newest"),
            models.Index(fields=["status", "created_at", "id"], name="outbox_status_newest"),
            models.Index(fields=["category", "created_at", "id"], name="outbox_category_newest"),
            models.Index(fields=["cause_type", "cause_id"], name="outbox_cause"),
            models.Index(fields=["batch", "status"], name="outbox_batch_status"),
        ]
        permissions = [("manage_outboundemail", "Can retry and cancel outbound e-mail")]

    def __str__(self) -> str:
        return f"{self.subject or '(no subject)'} to {self.recipient_list}"

    @property
    def recipient_list(self) -> str:
        return ", ".join(entry["address"] for entry in self.recipients)

    @property
    def has_body(self) -> bool:
        """Whether the body is still stored (it is dropped once delivered)."""
        try:
            return self.body is not None
        except OutboundBody.DoesNotExist:
            return False

    def message_bytes(self) -> bytes:
        """The message to send, decrypted. Raises BodyUnavailable saying why it cannot be.
        Reads the body row unless it came with the message (select_related("body"))."""
        if not self.has_body:
            raise BodyUnavailable(BODY_REMOVED)
        try:
            return keyring.decrypt_bytes(self.body.token.encode("ascii"))
        except (keyring.Undecryptable, UnicodeError):
            raise BodyUnavailable(BODY_UNREADABLE) from None


class OutboundBody(models.Model):
    """A message's body as it goes over the wire, sealed with seal(). Deleted by the UPDATE
    that makes its message Sent (a trigger, see notifications.triggers), so a sent
    invitation's link lives on only in the recipient's mailbox; kept apart so that the outbox's
    rows stay small."""

    email = models.OneToOneField(
        OutboundEmail, on_delete=models.CASCADE, primary_key=True, related_name="body"
    )
    token = models.TextField()

    def __str__(self) -> str:
        return f"body of {self.email_id}"


class OutboundRecipient(models.Model):
    """One envelope recipient of a message, lower case, for searching by address, address
    prefix or domain through an index (see outbox.search)."""

    email = models.ForeignKey(OutboundEmail, on_delete=models.CASCADE, related_name="+")
    address = models.CharField(max_length=254)
    domain = models.CharField(max_length=254)

    class Meta:
        indexes = [
            # varchar_pattern_ops on PostgreSQL: serves = and LIKE 'prefix%' whatever the
            # database's collation (ignored elsewhere). email_id second: an address's or a
            # domain's messages newest first without sorting them (outbox.listing).
            models.Index(
                fields=["address", "email"],
                name="outbox_recipient_address_id",
                opclasses=["varchar_pattern_ops", "int8_ops"],
            ),
            models.Index(fields=["domain", "email"], name="outbox_recipient_domain_id"),
        ]

    def __str__(self) -> str:
        return self.address


class OutboundStatusCount(models.Model):
    """How many outbox messages have each status, kept by database triggers (see
    notifications.triggers): up to 8 rows (shards) per status, so concurrent writers rarely
    wait for one another; a status's count is the sum of its rows. Read by
    outbox.counts_by_status."""

    status = models.CharField(max_length=10)
    shard = models.SmallIntegerField()
    n = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["status", "shard"], name="outbox_count_shard")
        ]

    def __str__(self) -> str:
        return f"{self.status}[{self.shard}] = {self.n}"


class Breaker(models.Model):
    """The SMTP server could not be reached, or would not let us in: the queue as a whole waits
    until `until`, and no message is charged an attempt for it. One row; a drain that reaches
    the server resets it, and so does saving the SMTP settings."""

    until = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0)  # in a row: the wait grows with them
    reason = models.TextField(blank=True)  # the last problem, as the outbox shows it

    def __str__(self) -> str:
        return f"holding the queue until {self.until}: {self.reason}" if self.until else "idle"


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


class Integration(models.Model):
    """An e-mail notification integration: who gets mail about which events."""

    name = models.CharField(max_length=100, unique=True)
    recipients = models.JSONField(default=list)  # ["ops@example.com", ...], validated, unique
    all_events = models.BooleanField(default=False)
    events = models.JSONField(default=list, blank=True)  # event types, see notifications.events
    subject_prefix = models.CharField(max_length=50, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def wants(self, event_type: str) -> bool:
        return self.all_events or event_type in self.events


class EventSource(models.TextChoices):
    PRODUCT = "product", "Product"
    API = "api", "HTTP API"
    COMMAND = "command", "Command"
    TEST = "test", "Test notification"


class Event(models.Model):
    """One event as it came in, and what it caused (see its dispatches)."""

    type = models.CharField(max_length=64)
    payload = models.JSONField(default=dict)
    source = models.CharField(max_length=10, choices=EventSource.choices)
    actor = models.CharField(max_length=150, blank=True)  # user name or API token, as text
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [  # newest first, for keyset pages: all, by type, by source
            models.Index(fields=["created_at", "id"], name="event_newest"),
            models.Index(fields=["type", "created_at", "id"], name="event_type_newest"),
            models.Index(fields=["source", "created_at", "id"], name="event_source_newest"),
        ]

    def __str__(self) -> str:
        return f"event {self.pk} ({self.type})"


class Dispatch(models.Model):
    """An integration an event matched, and the outbox message queued for it."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="dispatches")
    # Kept (as a name) when the integration or the message is deleted later.
    integration = models.ForeignKey(
        Integration, null=True, on_delete=models.SET_NULL, related_name="dispatches"
    )
    integration_name = models.CharField(max_length=100)
    email = models.ForeignKey(
        OutboundEmail, null=True, on_delete=models.SET_NULL, related_name="dispatches"
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.event} to {self.integration_name}"


class ApiToken(models.Model):
    """A bearer token for POST /api/v1/events. Only its SHA-256 is stored: the token itself
    is shown once, when it is created."""

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)  # the first characters, to recognise it by
    hash = models.CharField(max_length=64, unique=True)  # sha256 hex of the whole token
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The creating form's one-time value: submitting that form again (a reload) makes no
    # second token.
    nonce = models.CharField(max_length=32, blank=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        default_permissions = ()
        permissions = [("manage_apitoken", "Can create and revoke API tokens")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class ApiRateCount(models.Model):
    """Requests of one rate-limit bucket (a token, or an address without one) in one window of
    API_RATE_LIMIT (notifications/ratelimit.py): counted by one atomic statement per request,
    so concurrent web workers never lose a count."""

    key = models.CharField(max_length=200, primary_key=True)  # bucket, window length, window
    n = models.PositiveIntegerField()
    expires_at = models.DateTimeField(db_index=True)  # the window's end: deleted after it

    class Meta:
        default_permissions = ()

    def __str__(self) -> str:
        return f"{self.key}: {self.n}"
