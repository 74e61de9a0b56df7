"""Inviting, resending, revoking and accepting invitations.

A token is 256 random bits, sent only in the e-mail and stored only as its SHA-256, so the
database alone never gives anyone a usable link. Every e-mail goes through the outbox inside the
transaction that changes the invitation, so a failed save sends nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import Lower
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

import notifications
from notifications import outbox
from notifications.backends import OutboxBackend
from notifications.emails import header_safe
from notifications.models import Category, OutboundEmail, Status

from .addresses import Invitee
from .models import Invitation, InvitationStatus

DEFAULT_VALID_DAYS = 7
MAX_VALID_DAYS = 365
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")


class InvitationUnusable(Exception):
    """The invitation can no longer be accepted; `status` says why."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class UsernameTaken(Exception):
    pass


class GroupsNotGrantable(Exception):
    """The user may not give these groups: each has a permission the user does not hold."""

    def __init__(self, groups: Sequence[Group]) -> None:
        super().__init__(", ".join(g.name for g in groups))
        self.groups = list(groups)


def quoted_names(groups: Iterable[Group]) -> str:
    return ", ".join(f"“{group.name}”" for group in groups)


def may_grant(held: set[str], needed: set[str]) -> bool:
    """The one rule: a group may be given only by someone who holds all its permissions, so
    an invitation can never hand out more than its sender has."""
    return needed <= held


def ungrantable_groups(grantor: AbstractBaseUser | None, groups: Iterable[Group]) -> list[Group]:
    """The groups among `groups` that `grantor` may not give. None is the command line without
    --invited-by: whoever runs manage.py has the shell and the database already, so anything."""
    groups = list(groups)
    if grantor is None or (grantor.is_active and grantor.is_superuser):
        return []
    held = grantor.get_all_permissions()  # empty for an inactive user: grants nothing
    needed: dict[int, set[str]] = {group.pk: set() for group in groups}
    rows = Group.permissions.through.objects.filter(group__in=groups).values_list(
        "group_id", "permission__content_type__app_label", "permission__codename"
    )
    for group_id, app_label, codename in rows:
        needed[group_id].add(f"{app_label}.{codename}")
    return [group for group in groups if not may_grant(held, needed[group.pk])]


def grantable_groups(grantor: AbstractBaseUser | None) -> list[Group]:
    """Every group `grantor` may give, by name: what the invite form offers."""
    groups = list(Group.objects.order_by("name"))
    refused = {group.pk for group in ungrantable_groups(grantor, groups)}
    return [group for group in groups if group.pk not in refused]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def accept_url(token: str) -> str:
    return settings.PUBLIC_URL + reverse("accept_invitation", args=[token])


def actor_name(user: AbstractBaseUser | None) -> str:
    if user is None or not user.is_authenticated:
        return ""
    return header_safe(user.get_full_name() or user.get_username())[:150]


@dataclass
class InviteReport:
    invited: list[Invitation] = field(default_factory=list)
    reinvited: list[Invitation] = field(default_factory=list)  # new token for an open one
    refused: list[tuple[Invitee, str]] = field(default_factory=list)


def invite(
    invitees: Sequence[Invitee],
    *,
    groups: Iterable[Group] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
    inviter: AbstractBaseUser | None = None,
) -> InviteReport:
    """Invite each address and queue its e-mail; an address that already has an account is
    refused. Inviting an open (pending or expired) invitation again gives it a new token and
    expiry, so the earlier link stops working. Raises GroupsNotGrantable, inviting nobody, when
    the inviter may not give a group."""
    groups = list(groups)
    refused_groups = ungrantable_groups(inviter, groups)
    if refused_groups:
        raise GroupsNotGrantable(refused_groups)
    report = InviteReport()
    with transaction.atomic():
        taken = _existing_accounts([i.email for i in invitees])
        messages = []
        for invitee in invitees:
            if invitee.email.lower() in taken:
                report.refused.append(
                    (
                        invitee,
                        f"{invitee.email} already has an account "
                        f"({taken[invitee.email.lower()]}): they can sign in; no invitation sent.",
                    )
                )
                continue
            invitation, token, created = _open_invitation(invitee, groups, valid_days, inviter)
            (report.invited if created else report.reinvited).append(invitation)
            messages.append(invitation_email(invitation, token))
        OutboxBackend().store(messages)
        for invitation in report.invited + report.reinvited:
            announce_invited(invitation)
    return report


def _existing_accounts(addresses: list[str]) -> dict[str, str]:
    """Lower-case address -> user name, for the addresses that already have an account."""
    User = get_user_model()
    return dict(
        User.objects.annotate(address=Lower("email"))
        .filter(address__in={a.lower() for a in addresses})
        .values_list("address", User.USERNAME_FIELD)
    )


def _open_invitation(
    invitee: Invitee, groups: list[Group], valid_days: int, inviter: AbstractBaseUser | None
) -> tuple[Invitation, str, bool]:
    now = timezone.now()
    token, token_hash = new_token()
    values = {
        "token_hash": token_hash,
        "valid_days": valid_days,
        "sent_at": now,
        "expires_at": now + datetime.timedelta(days=valid_days),
        "invited_by": inviter if inviter is not None and inviter.is_authenticated else None,
        "invited_by_name": actor_name(inviter),
    }
    invitation = (
        Invitation.objects.select_for_update()
        .filter(email__iexact=invitee.email, accepted_at__isnull=True, revoked_at__isnull=True)
        .first()
    )
    created = invitation is None
    if created:
        try:
            with transaction.atomic():
                invitation = Invitation.objects.create(
                    email=invitee.email, name=invitee.name, created_at=now, **values
                )
        except IntegrityError:  # invited at this very moment by someone else: take theirs
            invitation = Invitation.objects.select_for_update().get(
                email__iexact=invitee.email, accepted_at__isnull=True, revoked_at__isnull=True
            )
            created = False
    if not created:
        for name, value in values.items():
            setattr(invitation, name, value)
        if invitee.name:
            invitation.name = invitee.name
        invitation.save()
    invitation.groups.set(groups)
    return invitation, token, created


def invitation_email(invitation: Invitation, token: str) -> EmailMultiAlternatives:
    context = {
        "invitation": invitation,
        "inviter": header_safe(invitation.inviter),
        "url": accept_url(token),
        "expires_at": invitation.expires_at,
        "time_zone": settings.TIME_ZONE,
    }
    inviter = header_safe(invitation.invited_by_name) or "An administrator"
    message = EmailMultiAlternatives(
        subject=f"{inviter} invited you to Gateway Manager",
        body=render_to_string("invitations/email.txt", context),
        to=[invitation.email],
    )
    message.attach_alternative(render_to_string("invitations/email.html", context), "text/html")
    message.outbox_category = Category.INVITATION
    message.outbox_cause = invitation
    return message


def resend(invitation: Invitation, actor: AbstractBaseUser | None = None) -> bool:
    """A new link with a fresh expiry for an open invitation; the old link stops working.
    Raises GroupsNotGrantable when `actor` may not give the invitation's groups: a resend is a
    new grant as much as the first invitation was."""
    if invitation.status not in (InvitationStatus.PENDING, InvitationStatus.EXPIRED):
        return False
    refused_groups = ungrantable_groups(actor, invitation.groups.all())
    if refused_groups:
        raise GroupsNotGrantable(refused_groups)
    with transaction.atomic():
        now = timezone.now()
        token, token_hash = new_token()
        updated = Invitation.objects.filter(
            pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(
            token_hash=token_hash,
            sent_at=now,
            expires_at=now + datetime.timedelta(days=invitation.valid_days),
        )
        if not updated:
            return False
        invitation.refresh_from_db()
        _cancel_waiting_email(invitation)
        OutboxBackend().store([invitation_email(invitation, token)])
        announce_invited(invitation)
    return True


def revoke(invitation: Invitation, actor: AbstractBaseUser | None) -> bool:
    """Withdraw an open invitation; an e-mail still waiting in the outbox is not sent."""
    with transaction.atomic():
        updated = Invitation.objects.filter(
            pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
        ).update(revoked_at=timezone.now(), revoked_by_name=actor_name(actor))
        if updated:
            _cancel_waiting_email(invitation)
    return bool(updated)


def _cancel_waiting_email(invitation: Invitation) -> None:
    OutboundEmail.objects.filter(
        cause_type=ContentType.objects.get_for_model(Invitation),
        cause_id=str(invitation.pk),
        status__in=outbox.CANCELLABLE,
    ).update(status=Status.CANCELLED)


def find(token: str) -> Invitation | None:
    """The invitation this token belongs to, or None for a token that is unknown, replaced by
    a newer one, or altered."""
    if not token or len(token) > 100:
        return None
    return (
        Invitation.objects.select_related("invited_by").filter(token_hash=hash_token(token)).first()
    )


def suggest_username(email: str) -> str:
    """The address's local part as a user name, numbered if it is taken."""
    User = get_user_model()
    base = _USERNAME_UNSAFE.sub("", email.rsplit("@", 1)[0])[:140] or "user"
    candidate, number = base, 1
    while User.objects.filter(**{f"{User.USERNAME_FIELD}__iexact": candidate}).exists():
        number += 1
        candidate = f"{base}{number}"
    return candidate


def accept(token: str, *, name: str, username: str, password: str) -> AbstractBaseUser:
    """Create the invited user, exactly once however many requests race with the same token.

    The conditional UPDATE is the arbiter: only one transaction can turn an open, unexpired
    invitation into an accepted one; the others find nothing to update.
    """
    invitation = find(token)
    if invitation is None:
        raise InvitationUnusable("unknown")
    User = get_user_model()
    try:
        with transaction.atomic():
            now = timezone.now()
            claimed = Invitation.objects.filter(
                pk=invitation.pk,
                token_hash=hash_token(token),
                accepted_at__isnull=True,
                revoked_at__isnull=True,
                expires_at__gt=now,
            ).update(accepted_at=now)
            if not claimed:
                invitation.refresh_from_db()
                raise InvitationUnusable(invitation.status)
            user = User(username=username, email=invitation.email, first_name=name)
            user.set_password(password)
            user.save()
            user.groups.set(invitation.groups.all())
            Invitation.objects.filter(pk=invitation.pk).update(user=user)
            invitation.refresh_from_db()
            announce_joined(invitation, user)
    except IntegrityError:  # the user name was taken between the form's check and now
        raise UsernameTaken(username) from None
    return user


def status_filter(status: str, now: datetime.datetime) -> Q:
    """The invitations in one status, as a database condition."""
    open_ = Q(accepted_at__isnull=True, revoked_at__isnull=True)
    return {
        InvitationStatus.PENDING: open_ & Q(expires_at__gt=now),
        InvitationStatus.EXPIRED: open_ & Q(expires_at__lte=now),
        InvitationStatus.ACCEPTED: Q(accepted_at__isnull=False),
        InvitationStatus.REVOKED: Q(accepted_at__isnull=True, revoked_at__isnull=False),
    }[status]


def with_status(status: str = "") -> QuerySet[Invitation]:
    rows = Invitation.objects.select_related("invited_by", "user").prefetch_related("groups")
    return rows.filter(status_filter(status, timezone.now())) if status else rows


def counts_by_status() -> dict[str, int]:
    now = timezone.now()
    return Invitation.objects.aggregate(
        **{value: Count("id", filter=status_filter(value, now)) for value in InvitationStatus}
    )


def delivery_of(invitations: Sequence[Invitation]) -> dict[int, OutboundEmail]:
    """The latest outbox message of each invitation, for its delivery status."""
    kind = ContentType.objects.get_for_model(Invitation)
    latest: dict[int, OutboundEmail] = {}
    emails = OutboundEmail.objects.filter(
        cause_type=kind, cause_id__in=[str(i.pk) for i in invitations]
    ).only("id", "cause_id", "status", "last_error", "sent_at", "attempts", "created_at")
    for email in emails.order_by("created_at", "id"):
        latest[int(email.cause_id)] = email
    return latest


def announce_invited(invitation: Invitation) -> None:
    """The one place that tells the rest of the product an address was invited."""
    notifications.trigger(
        "user.invited",
        {
            "email": invitation.email,
            "invited_by": invitation.invited_by_name or "the command line",
            "expires_at": invitation.expires_at.isoformat(),
        },
        actor=invitation.invited_by_name,
    )


def announce_joined(invitation: Invitation, user: AbstractBaseUser) -> None:
    """The one place that tells the rest of the product an invitee joined."""
    notifications.trigger(
        "user.joined",
        {
            "username": user.get_username(),
            "email": invitation.email,
            "name": user.get_full_name(),
            "invited_by": invitation.invited_by_name,
        },
        actor=user,
    )
