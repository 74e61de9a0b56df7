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
            # One open invitation per address: inviting it again replaces the token.
            models.UniqueConstraint(
                Lower("email"),
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="one_open_invitation_per_address",
            )
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
