"""Inviting, resending, revoking and accepting invitations.

A token is 256 random bits, sent only in the e-mail and stored only as its SHA-256, so the
database alone never gives anyone a usable link. Every e-mail goes through the outbox inside the
transaction that changes the invitation, so a failed save sends nothing.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser, Group
from django.contrib.contenttypes.models import ContentType
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.db.models.functions import Lower
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from django_tasks import task

import notifications
from notifications import outbox
from notifications.backends import OutboxBackend
from notifications.emails import header_safe
from notifications.models import Category, OutboundEmail, Status
from notifications.triggering import trigger_many

from .addresses import Invitee
from .models import Invitation, InvitationBatch, InvitationStatus

log = logging.getLogger(__name__)

DEFAULT_VALID_DAYS = 7
MAX_VALID_DAYS = 365
_USERNAME_UNSAFE = re.compile(r"[^\w.@+-]")
# Addresses per transaction: a few statements each, whatever the count (bench/bulk_invite.py).
BATCH_CHUNK = 1_000
# A submission of up to this many addresses is invited within its request (about a second on
# PostgreSQL, see bench/bulk_invite.py); a larger one is saved and invited by a worker, so no
# request can run into gunicorn's timeout with it.
INLINE_MAX = 1_000
# A worker holds a batch this long per chunk; past it, the batch is queued again.
BATCH_LEASE = datetime.timedelta(minutes=2)
# The counts on the page read at most this many rows each; past it they say "10,000+".
COUNT_CAP = 10_000
PAGE_SIZE = 50


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
    the inviter may not give a group. One transaction, set-based: a few statements per
    BATCH_CHUNK addresses, not per address."""
    groups = list(groups)
    refused_groups = ungrantable_groups(inviter, groups)
    if refused_groups:
        raise GroupsNotGrantable(refused_groups)
    invitees = unique(invitees)
    report = InviteReport()
    with transaction.atomic():
        for start in range(0, len(invitees), BATCH_CHUNK):
            invite_chunk(
                invitees[start : start + BATCH_CHUNK],
                groups=groups,
                valid_days=valid_days,
                inviter=inviter,
                inviter_name=actor_name(inviter),
                report=report,
            )
    return report


def unique(invitees: Iterable[Invitee]) -> list[Invitee]:
    """Each address once (the first entry for it), in the order given."""
    first: dict[str, Invitee] = {}
    for invitee in invitees:
        first.setdefault(invitee.email.lower(), invitee)
    return list(first.values())


def invite_chunk(
    invitees: Sequence[Invitee],
    *,
    groups: list[Group],
    valid_days: int,
    inviter: AbstractBaseUser | None,
    inviter_name: str,
    report: InviteReport,
) -> None:
    """invite() for one chunk of distinct addresses, in the caller's transaction, adding to
    `report`: one query for the accounts, one for the open invitations (by the unique index),
    bulk INSERT/UPDATE, one store() for the e-mails and one trigger_many() for the events."""
    taken = _existing_accounts([i.email for i in invitees])
    wanted = []
    for invitee in invitees:
        username = taken.get(invitee.email.lower())
        if username is None:
            wanted.append(invitee)
        else:
            report.refused.append(
                (
                    invitee,
                    f"{invitee.email} already has an account ({username}): they can sign in; "
                    "no invitation sent.",
                )
            )
    if not wanted:
        return
    now = timezone.now()
    values = {
        "valid_days": valid_days,
        "sent_at": now,
        "expires_at": now + datetime.timedelta(days=valid_days),
        "invited_by": inviter if inviter is not None and inviter.is_authenticated else None,
        "invited_by_name": inviter_name,
    }
    tokens = [new_token() for _ in wanted]
    saved = _save_invitations(wanted, [hashed for _, hashed in tokens], values, now)
    _give_groups(saved, groups)
    emails = InvitationEmails()
    messages = [
        emails.message(invitation, token)
        for (invitation, _), (token, _) in zip(saved, tokens, strict=True)
    ]
    OutboxBackend().store(messages)
    announce_invited_many([invitation for invitation, _ in saved])
    for invitation, created in saved:
        (report.invited if created else report.reinvited).append(invitation)


def open_invitations(addresses: Iterable[str]) -> QuerySet[Invitation]:
    """The open invitations of these addresses, found through the unique index
    one_open_invitation_per_address: the same expression, Lower("email"), and the same
    condition. (`email__iexact` is UPPER(email) LIKE ...: no index serves it.)"""
    return (
        Invitation.objects.alias(address=Lower("email"))
        .filter(address__in={a.lower() for a in addresses}, accepted_at__isnull=True)
        .filter(revoked_at__isnull=True)
        .order_by()
    )


def _save_invitations(
    invitees: list[Invitee], token_hashes: list[str], values: dict, now: datetime.datetime
) -> list[tuple[Invitation, bool]]:
    """(invitation, created) for each invitee, in order: a new invitation, or the address's
    open one with a new token. If another request invites one of these addresses at this very
    moment, the INSERT fails on the unique index; the savepoint then undoes only this attempt,
    and the next one finds their invitation and takes it over."""
    for attempt in range(3):
        try:
            with transaction.atomic():
                return _save_invitations_once(invitees, token_hashes, values, now)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _save_invitations_once(
    invitees: list[Invitee], token_hashes: list[str], values: dict, now: datetime.datetime
) -> list[tuple[Invitation, bool]]:
    existing = {
        invitation.email.lower(): invitation
        for invitation in open_invitations(i.email for i in invitees).select_for_update()
    }
    saved: list[tuple[Invitation, bool]] = []
    for invitee, token_hash in zip(invitees, token_hashes, strict=True):
        invitation = existing.get(invitee.email.lower())
        if invitation is None:
            invitation = Invitation(
                email=invitee.email,
                name=invitee.name,
                created_at=now,
                token_hash=token_hash,
                **values,
            )
            saved.append((invitation, True))
            continue
        invitation.token_hash = token_hash
        for name, value in values.items():
            setattr(invitation, name, value)
        if invitee.name:
            invitation.name = invitee.name
        saved.append((invitation, False))
    Invitation.objects.bulk_create([invitation for invitation, created in saved if created])
    reopened = [invitation for invitation, created in saved if not created]
    if reopened:
        # What all share in one UPDATE; each one's own token (and name) by primary key.
        Invitation.objects.filter(pk__in=[i.pk for i in reopened]).update(**values)
        Invitation.objects.bulk_update(reopened, ["token_hash", "name"])
    return saved


def _give_groups(saved: list[tuple[Invitation, bool]], groups: list[Group]) -> None:
    """invitation.groups.set(groups) for all of them, in two statements."""
    through = Invitation.groups.through
    reopened = [invitation.pk for invitation, created in saved if not created]
    if reopened:
        through.objects.filter(invitation_id__in=reopened).delete()
    if groups:
        through.objects.bulk_create(
            [
                through(invitation_id=invitation.pk, group_id=group.pk)
                for invitation, _ in saved
                for group in groups
            ]
        )


def _existing_accounts(addresses: list[str]) -> dict[str, str]:
    """Lower-case address -> user name, for the addresses that already have an account."""
    User = get_user_model()
    return dict(
        User.objects.annotate(address=Lower("email"))
        .filter(address__in={a.lower() for a in addresses})
        .values_list("address", User.USERNAME_FIELD)
    )


class InvitationEmails:
    """The invitation e-mails of one batch. The templates are rendered once per kind of
    message (who invites, until when, with or without a name to greet), with markers where
    each invitee's own parts go (name, address, link); each message is then the rendering with
    its parts put in, escaped for the HTML part as the template would have escaped them. The
    markers hold a random value, so no name or address can fake one."""

    def __init__(self) -> None:
        marker = secrets.token_hex(12)
        self._slots = {part: f"invitee{marker}{part}" for part in ("name", "email", "token")}
        self._pattern = re.compile("|".join(self._slots.values()))
        self._rendered: dict[tuple, tuple[str, str, str]] = {}

    def message(self, invitation: Invitation, token: str) -> EmailMultiAlternatives:
        subject, text, page = self._render(invitation)
        own = {
            self._slots["name"]: invitation.name,
            self._slots["email"]: invitation.email,
            self._slots["token"]: token,
        }
        escaped = {slot: escape(value) for slot, value in own.items()}
        message = EmailMultiAlternatives(
            subject=subject, body=self._fill(text, own), to=[invitation.email]
        )
        message.attach_alternative(self._fill(page, escaped), "text/html")
        message.outbox_category = Category.INVITATION
        message.outbox_cause = invitation
        return message

    def _fill(self, rendered: str, values: dict[str, str]) -> str:
        # One pass: a value put in is never searched again for markers.
        return self._pattern.sub(lambda found: values[found.group(0)], rendered)

    def _render(self, invitation: Invitation) -> tuple[str, str, str]:
        inviter = header_safe(invitation.inviter)
        key = (inviter, invitation.invited_by_name, invitation.expires_at, bool(invitation.name))
        if key not in self._rendered:
            # An unsaved copy with markers for its own parts: the template may use any field.
            stand_in = Invitation(
                email=self._slots["email"],
                name=self._slots["name"] if invitation.name else "",
                invited_by_id=invitation.invited_by_id,
                invited_by_name=invitation.invited_by_name,
                valid_days=invitation.valid_days,
                sent_at=invitation.sent_at,
                expires_at=invitation.expires_at,
            )
            if invitation.invited_by_id is not None:
                stand_in.invited_by = invitation.invited_by  # already loaded: no query
            context = {
                "invitation": stand_in,
                "inviter": inviter,
                "url": accept_url(self._slots["token"]),
                "expires_at": invitation.expires_at,
                "time_zone": settings.TIME_ZONE,
            }
            sender = header_safe(invitation.invited_by_name) or "An administrator"
            self._rendered[key] = (
                f"{sender} invited you to Gateway Manager",
                render_to_string("invitations/email.txt", context),
                render_to_string("invitations/email.html", context),
            )
        return self._rendered[key]


def invitation_email(invitation: Invitation, token: str) -> EmailMultiAlternatives:
    return InvitationEmails().message(invitation, token)


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
    """The invitations in each status, each count stopping at COUNT_CAP + 1 ("more than"): a
    count reads at most that many entries of its index, however many invitations there are."""
    now, cap = timezone.now(), COUNT_CAP
    return {
        value: Invitation.objects.filter(status_filter(value, now)).order_by()[: cap + 1].count()
        for value in InvitationStatus
    }


@dataclass
class InvitationPage:
    """A page of the invitation list, newest first by (sent_at, id), found from the row before
    it (keyset): no OFFSET, so the last page costs what the first does."""

    rows: list[Invitation]
    older: str  # the cursor of the last row, when older rows follow; "" otherwise
    is_first: bool
    params: dict[str, str]

    def __iter__(self):
        return iter(self.rows)

    @property
    def newest_url(self) -> str:
        return "?" + urlencode(self.params)

    @property
    def older_url(self) -> str:
        return "?" + urlencode({**self.params, "older": self.older})


def cursor_of(invitation: Invitation) -> str:
    micros = (invitation.sent_at - _EPOCH) // datetime.timedelta(microseconds=1)
    return f"{micros}_{invitation.pk}"


def parse_cursor(text: str) -> tuple[datetime.datetime, int] | None:
    """(sent_at, id) from a cursor in a URL, or None for anything that is not one."""
    micros, _, pk = text.partition("_")
    if not (micros.lstrip("-").isdigit() and pk.isdigit()) or len(micros) > 18 or len(pk) > 18:
        return None
    try:
        return _EPOCH + datetime.timedelta(microseconds=int(micros)), int(pk)
    except OverflowError:
        return None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def invitation_page(status: str, older: str = "", size: int = PAGE_SIZE) -> InvitationPage:
    """The page of invitations in `status` ("" for all) after the row `older` names."""
    rows = with_status(status).order_by("-sent_at", "-id")
    after = parse_cursor(older)
    if after is not None:
        sent_at, pk = after
        # sent_at <= the cursor's bounds the index range; the OR only orders rows of that instant.
        rows = rows.filter(Q(sent_at__lte=sent_at) & (Q(sent_at__lt=sent_at) | Q(id__lt=pk)))
    found = list(rows[: size + 1])
    shown = found[:size]
    return InvitationPage(
        rows=shown,
        older=cursor_of(shown[-1]) if len(found) > size else "",
        is_first=after is None,
        params={"status": status} if status else {},
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


def announce_invited_many(rows: Sequence[Invitation]) -> None:
    """announce_invited() for each invitation, set-based: one user.invited event each."""
    if not rows:
        return
    trigger_many(
        "user.invited",
        [
            {
                "email": invitation.email,
                "invited_by": invitation.invited_by_name or "the command line",
                "expires_at": invitation.expires_at.isoformat(),
            }
            for invitation in rows
        ],
        actor=rows[0].invited_by_name,
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


# --- Submissions too large for one request: saved first, invited by a worker ------------------


def submit(
    invitees: Sequence[Invitee],
    *,
    groups: Iterable[Group] = (),
    valid_days: int = DEFAULT_VALID_DAYS,
    inviter: AbstractBaseUser | None = None,
) -> InvitationBatch:
    """Save a submission in one row and queue the task that invites it, a chunk at a time.
    Takes a few statements whatever its size, so the request that makes it always finishes.
    Raises GroupsNotGrantable, saving nothing, as invite() does."""
    groups = list(groups)
    refused_groups = ungrantable_groups(inviter, groups)
    if refused_groups:
        raise GroupsNotGrantable(refused_groups)
    invitees = unique(invitees)
    with transaction.atomic():
        batch = InvitationBatch.objects.create(
            invited_by=inviter if inviter is not None and inviter.is_authenticated else None,
            invited_by_name=actor_name(inviter),
            valid_days=valid_days,
            invitees=[[invitee.email, invitee.name] for invitee in invitees],
            total=len(invitees),
            lease_until=timezone.now() + BATCH_LEASE,
        )
        batch.groups.set(groups)
        transaction.on_commit(lambda: _enqueue(batch.pk))
    return batch


def _enqueue(batch_id: int) -> None:
    """Never fails the caller: the batch is saved, and resume_stalled_batches() queues it
    again once its lease runs out."""
    try:
        invite_batch.enqueue(batch_id)
    except Exception:
        log.warning("Invitations: could not queue batch %s; it is retried later", batch_id)


@task()
def invite_batch(batch_id: int) -> int:
    """The worker's side of submit()."""
    return run_batch(batch_id)


def run_batch(batch_id: int) -> int:
    """Invite what is left of a saved submission, one chunk per transaction that also records
    the progress; returns how many addresses this run handled. A worker that dies loses only
    the chunk in hand, which the next run does again; two runs at once take turns per chunk."""
    handled = 0
    while True:
        with transaction.atomic():
            # The UPDATE comes first: it locks the row (and, on SQLite, the database) so that
            # two runs never read the same progress.
            locked = InvitationBatch.objects.filter(pk=batch_id, finished_at__isnull=True).update(
                lease_until=timezone.now() + BATCH_LEASE
            )
            if not locked:
                return handled
            batch = InvitationBatch.objects.select_related("invited_by").get(pk=batch_id)
            chunk = [
                Invitee(email, name) for email, name in batch.invitees[batch.done :][:BATCH_CHUNK]
            ]
            report = InviteReport()
            try:
                _invite_batch_chunk(batch, chunk, report)
            except GroupsNotGrantable as refused:
                batch.problems.append(
                    f"{batch.total - batch.done:,} address(es) not invited: "
                    f"{batch.invited_by_name or 'the inviter'} may no longer give "
                    f"{quoted_names(refused.groups)}."
                )
                batch.done = batch.total
            else:
                batch.done += len(chunk)
                batch.invited += len(report.invited)
                batch.reinvited += len(report.reinvited)
                batch.problems += [reason for _, reason in report.refused]
            fields = ["done", "invited", "reinvited", "problems", "finished_at"]
            if batch.done >= batch.total:
                batch.finished_at = timezone.now()
                # The addresses live on in the invitations and the problems: not kept twice.
                batch.invitees = []
                fields.append("invitees")
            batch.save(update_fields=fields)
        handled += len(chunk)


def _invite_batch_chunk(batch: InvitationBatch, chunk: list[Invitee], report: InviteReport) -> None:
    groups = list(batch.groups.all())
    # Checked again for every chunk: the inviter may have lost a permission meanwhile. An
    # inviter who was deleted may give nothing; only the command line (no name) gives anything.
    grantor = batch.invited_by or (AnonymousUser() if batch.invited_by_name else None)
    refused_groups = ungrantable_groups(grantor, groups)
    if refused_groups:
        raise GroupsNotGrantable(refused_groups)
    invite_chunk(
        chunk,
        groups=groups,
        valid_days=batch.valid_days,
        inviter=batch.invited_by,
        inviter_name=batch.invited_by_name,
        report=report,
    )


def unfinished_batches() -> list[InvitationBatch]:
    return list(InvitationBatch.objects.filter(finished_at__isnull=True).order_by("created_at"))


def recent_batches(shown: int = 3, days: int = 7) -> list[InvitationBatch]:
    """What the Users page shows: every unfinished batch, and the latest few finished in the
    past `days` (with their problems)."""
    since = timezone.now() - datetime.timedelta(days=days)
    finished = InvitationBatch.objects.filter(finished_at__gte=since).order_by("-finished_at")
    return [*unfinished_batches(), *finished[:shown]]


def resume_stalled_batches() -> int:
    """Queue again each unfinished batch whose lease ran out: its worker died, or its task was
    lost. Each is queued once per lease, however often this runs. Returns how many."""
    now = timezone.now()
    stalled = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    queued = 0
    for batch_id in InvitationBatch.objects.filter(stalled, finished_at__isnull=True).values_list(
        "pk", flat=True
    ):
        taken = InvitationBatch.objects.filter(stalled, pk=batch_id, finished_at__isnull=True)
        if taken.update(lease_until=now + BATCH_LEASE):
            log.info("Invitations: batch %s stalled; queued again", batch_id)
            transaction.on_commit(lambda batch_id=batch_id: _enqueue(batch_id))
            queued += 1
    return queued
