"""Users join by invitation: who was invited, by whom, until when, and what became of it."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


class InvitationStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    ACCEPTED = "accepted", "Accepted"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


OPEN = models.Q(accepted_at__isnull=True, revoked_at__isnull=True)  # pending or expired


class Invitation(models.Model):
    """One address invited to join. Only the SHA-256 of its token is stored, so the link
    exists only in the e-mail; resending issues a new token and the old link stops working."""

    email = models.EmailField(max_length=254)
    name = models.CharField(max_length=150, blank=True)  # from "Name <address>", if given
    token_hash = models.CharField(max_length=64, unique=True)
    groups = models.ManyToManyField(Group, blank=True, related_name="+")
    valid_days = models.PositiveSmallIntegerField(default=7)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    invited_by_name = models.CharField(max_length=150, blank=True)  # kept if the user goes
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(default=timezone.now)  # the latest token's e-mail
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="invitation",
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by_name = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-sent_at", "-id"]
        constraints = [
            # One open invitation per address: inviting it again replaces the token. Its
            # index also serves the duplicate check, filtered by this very expression.
            models.UniqueConstraint(
                Lower("email"),
                condition=OPEN,
                name="one_open_invitation_per_address",
            )
        ]
        indexes = [
            # The list, newest first, a page at a time from the row before (keyset).
            models.Index(fields=["sent_at", "id"], name="invitation_sent"),
            # The counts per status, each read from an index and bounded (invitations.py).
            models.Index(fields=["expires_at"], condition=OPEN, name="invitation_open_expiry"),
            models.Index(
                fields=["accepted_at"],
                condition=models.Q(accepted_at__isnull=False),
                name="invitation_accepted",
            ),
            models.Index(
                fields=["revoked_at"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=False),
                name="invitation_revoked",
            ),
        ]

    def __str__(self) -> str:
        return f"Invitation for {self.email} ({self.status})"

    @property
    def status(self) -> str:
        return invitation_status(self, timezone.now())

    def get_status_display(self) -> str:
        return InvitationStatus(self.status).label

    @property
    def inviter(self) -> str:
        """Whom the invitee should ask, as the e-mail and the error pages name them."""
        if self.invited_by is not None:
            full = self.invited_by.get_full_name()
            address = self.invited_by.email
            name = full or self.invited_by.get_username()
            return f"{name} ({address})" if address else name
        return self.invited_by_name or "an administrator of Gateway Manager"


def invitation_status(invitation: Invitation, now) -> str:
    if invitation.accepted_at is not None:
        return InvitationStatus.ACCEPTED
    if invitation.revoked_at is not None:
        return InvitationStatus.REVOKED
    if invitation.expires_at <= now:
        return InvitationStatus.EXPIRED
    return InvitationStatus.PENDING


class InvitationBatch(models.Model):
    """A submission too large to invite within its request: saved first, in one row, then
    invited by a task a chunk at a time. Each chunk commits with the progress below, so a worker
    that dies loses at most the chunk in hand, and the next one goes on from `done`."""

    created_at = models.DateTimeField(default=timezone.now)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    invited_by_name = models.CharField(max_length=150, blank=True)
    groups = models.ManyToManyField(Group, blank=True, related_name="+")
    valid_days = models.PositiveSmallIntegerField(default=7)
    invitees = models.JSONField()  # [[address, name], ...] in the order pasted
    total = models.PositiveIntegerField()
    done = models.PositiveIntegerField(default=0)  # the first `done` invitees are handled
    invited = models.PositiveIntegerField(default=0)
    reinvited = models.PositiveIntegerField(default=0)
    problems = models.JSONField(default=list)  # a sentence per address not invited
    # Until then a task holds the batch, or is queued for it; past it the batch is stalled
    # (its worker died) and is queued again.
    lease_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["finished_at", "created_at"], name="invitation_batch_open")]

    def __str__(self) -> str:
        return self.progress

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    @property
    def progress(self) -> str:
        """ "3,000 of 10,000 invited, 2 problems" """
        problems = len(self.problems)
        return (
            f"{self.invited + self.reinvited:,} of {self.total:,} invited, "
            f"{problems:,} problem{'' if problems == 1 else 's'}"
        )

    def shown_problems(self, shown: int = 20) -> list[str]:
        """The first problems, and how many more there are: a page of bounded size."""
        if len(self.problems) <= shown:
            return self.problems
        return [*self.problems[:shown], f"… and {len(self.problems) - shown:,} more."]
