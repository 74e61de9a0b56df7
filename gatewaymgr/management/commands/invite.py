"""Invite users by e-mail from the command line, exactly as the Users & invitations page does."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from gatewaymgr import invitations
from gatewaymgr.addresses import parse_entries
from smtpsettings import store


class Command(BaseCommand):
    help = (
        "Invite people by e-mail. Each gets a link to choose a user name and password. "
        "The e-mails go through the outbox; a worker (manage.py db_worker) sends them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "addresses", nargs="+", metavar="EMAIL", help="Addresses, or 'Name <address>'."
        )
        parser.add_argument(
            "--group",
            action="append",
            default=[],
            metavar="NAME",
            help="A group the new users join (repeat for several).",
        )
        parser.add_argument(
            "--expires-days",
            type=int,
            default=invitations.DEFAULT_VALID_DAYS,
            metavar="N",
            help=f"Days the link stays valid (default {invitations.DEFAULT_VALID_DAYS}).",
        )
        parser.add_argument(
            "--invited-by",
            metavar="USERNAME",
            help="The user the e-mail names as the one who invited (default: nobody named). "
            "They must hold every permission of the groups given.",
        )

    def handle(self, *args: Any, addresses: list[str], **options: Any) -> None:
        days = options["expires_days"]
        if not 1 <= days <= invitations.MAX_VALID_DAYS:
            raise CommandError(f"--expires-days: enter 1 to {invitations.MAX_VALID_DAYS}.")
        groups = list(Group.objects.filter(name__in=options["group"]))
        unknown = sorted(set(options["group"]) - {g.name for g in groups})
        if unknown:
            known = ", ".join(Group.objects.order_by("name").values_list("name", flat=True))
            raise CommandError(
                f"--group: no group named {', '.join(unknown)}. "
                f"Groups: {known or 'none yet (create them in /admin/)'}."
            )
        inviter = None
        if options["invited_by"]:
            User = get_user_model()
            inviter = User.objects.filter(**{User.USERNAME_FIELD: options["invited_by"]}).first()
            if inviter is None:
                raise CommandError(f"--invited-by: no user named {options['invited_by']}.")
        refused_groups = invitations.ungrantable_groups(inviter, groups)
        if refused_groups:
            # Without --invited-by the command may give any group: it runs with the shell's
            # rights, which reach the database anyway. Naming a user limits it to theirs.
            raise CommandError(
                f"--group: {options['invited_by']} cannot grant "
                f"{invitations.quoted_names(refused_groups)}: only groups whose permissions they "
                "hold. Nobody was invited."
            )
        # Each argument is one entry: a line break inside one is reported, never split on.
        invitees, problems = parse_entries(
            (f"Argument {number}", argument) for number, argument in enumerate(addresses, 1)
        )
        report = invitations.invite(invitees, groups=groups, valid_days=days, inviter=inviter)
        for invitation in report.invited:
            self.stdout.write(
                f"invited    {invitation.email} "
                f"(until {timezone.localtime(invitation.expires_at):%Y-%m-%d %H:%M %Z})"
            )
        for invitation in report.reinvited:
            self.stdout.write(f"new link   {invitation.email} (the earlier link no longer works)")
        for _, reason in report.refused:
            self.stderr.write(f"refused    {reason}")
        for problem in problems:
            self.stderr.write(f"invalid    {problem}")
        sent = len(report.invited) + len(report.reinvited)
        if sent:
            self.stdout.write(f"{sent} invitation e-mail(s) queued in the outbox.")
            if not store.load().host:
                self.stderr.write(
                    "No SMTP server is configured: the e-mails wait in the outbox until one is "
                    "(Settings -> SMTP, or manage.py smtp_settings set --host ...)."
                )
        if problems or report.refused:
            raise CommandError(
                f"{len(problems) + len(report.refused)} address(es) not invited; see above."
            )
