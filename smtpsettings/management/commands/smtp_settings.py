"""Show or change the SMTP settings from the command line, validated exactly like the page."""

from __future__ import annotations

import dataclasses
import getpass
import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from smtpsettings import store
from smtpsettings.certificates import InvalidCertificate, parse_pem_bundle
from smtpsettings.diagnostics import send_test_email
from smtpsettings.forms import RecipientForm, SmtpSettingsForm, form_data
from smtpsettings.models import PasswordState, SmtpSettings
from smtpsettings.options import OptionsError

# --flag -> form field, for the fields `set` can change.
SET_FLAGS = {
    "sender": "sender_email",
    "sender_name": "sender_name",
    "reply_to": "reply_to",
    "bounce_address": "bounce_address",
    "host": "host",
    "port": "port",
    "encryption": "encryption",
    "user": "username",
    "options": "options",
    "auth": "auth_method",
    "oauth_provider": "oauth_provider",
    "oauth_tenant": "oauth_tenant",
    "oauth_client_id": "oauth_client_id",
    "oauth_token_url": "oauth_token_url",
    "oauth_scope": "oauth_scope",
    "oauth_secret_expires": "oauth_secret_expires",
}
# --flag FILE -> form field that takes the file's text (- reads standard input).
FILE_FLAGS = {
    "oauth_certificate": "oauth_certificate",
    "oauth_service_account": "oauth_service_account",
    "client_certificate": "client_certificate_pem",
}
# --flag -> form field that takes one line of standard input: a secret is never an argument.
STDIN_FLAGS = {
    "password_stdin": "password",
    "oauth_client_secret_stdin": "oauth_client_secret",
    "oauth_refresh_token_stdin": "oauth_refresh_token",
}
CLEAR_FLAGS = ("clear_password", "clear_oauth_credential", "clear_client_certificate")


class Command(BaseCommand):
    help = "Show or change the SMTP settings."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True, metavar="{show,set,test}")
        show = commands.add_parser("show", help="Print the settings and what they will do.")
        show.add_argument("--json", action="store_true", help="Print JSON.")
        change = commands.add_parser(
            "set", help="Change the fields given; the others keep their values."
        )
        change.add_argument("--sender", help="Sender e-mail address.")
        change.add_argument("--sender-name", help="Sender display name ('' to remove).")
        change.add_argument(
            "--reply-to", help="Reply-To address set on every message ('' to remove)."
        )
        change.add_argument(
            "--bounce-address",
            help="Envelope sender (MAIL FROM) that receives bounces ('' to remove).",
        )
        change.add_argument("--host", help="SMTP server host name or IP address.")
        change.add_argument("--port", help="TCP port, 1-65535 (default 587).")
        change.add_argument("--encryption", choices=["auto", "smtps"])
        change.add_argument(
            "--user", help="User name ('' for no authentication); for OAuth 2.0 the mailbox."
        )
        change.add_argument("--auth", choices=["none", "password", "oauth2"])
        secret = change.add_mutually_exclusive_group()
        secret.add_argument(
            "--password-stdin",
            action="store_true",
            help="Read the password from standard input (it is never an argument).",
        )
        secret.add_argument("--clear-password", action="store_true")
        oauth = change.add_argument_group("OAuth 2.0")
        oauth.add_argument("--oauth-provider", choices=["microsoft", "google", "other"])
        oauth.add_argument("--oauth-tenant", help="Microsoft 365: tenant ID or domain.")
        oauth.add_argument("--oauth-client-id", help="Application (client) ID.")
        oauth.add_argument("--oauth-token-url", help="Other provider: the token URL.")
        oauth.add_argument("--oauth-scope", help="Other provider: the scope to ask for.")
        oauth.add_argument(
            "--oauth-client-secret-stdin", action="store_true", help="Read the client secret."
        )
        oauth.add_argument(
            "--oauth-secret-expires", metavar="YYYY-MM-DD", help="When the client secret expires."
        )
        oauth.add_argument(
            "--oauth-certificate", metavar="FILE", help="PEM with the certificate and its key."
        )
        oauth.add_argument(
            "--oauth-service-account", metavar="FILE", help="Google's service account key (JSON)."
        )
        oauth.add_argument(
            "--oauth-refresh-token-stdin", action="store_true", help="Read a refresh token."
        )
        oauth.add_argument("--clear-oauth-credential", action="store_true")
        change.add_argument(
            "--client-certificate",
            metavar="FILE",
            help="PEM with a TLS client certificate and its private key.",
        )
        change.add_argument("--clear-client-certificate", action="store_true")
        change.add_argument("--options", help="Options JSON, e.g. '{\"verify_peer\": false}'.")
        change.add_argument(
            "--trusted-certificate",
            metavar="FILE",
            help="PEM file with the certificate to trust ('' to remove, - for stdin).",
        )

        test = commands.add_parser(
            "test", help="Send a test e-mail with the stored settings and show every step."
        )
        test.add_argument("--to", required=True, metavar="ADDRESS", help="Recipient.")
        test.add_argument("--json", action="store_true", help="Print the transcript as JSON.")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "show":
            self.show(as_json=options["json"])
        elif action == "test":
            self.test(options["to"], as_json=options["json"])
        else:
            self.change(options)

    def test(self, recipient: str, *, as_json: bool) -> None:
        form = RecipientForm({"test_to": recipient})
        if not form.is_valid():
            raise CommandError(f"--to: {' '.join(form.errors['test_to'])}")
        diagnosis = send_test_email(store.load(), form.cleaned_data["test_to"])
        if as_json:
            self.stdout.write(json.dumps(diagnosis.as_dict(), indent=2))
        else:
            for step in diagnosis.steps:
                mark = "ok  " if step.ok else "FAIL"
                text = "; ".join(part for part in (step.detail, step.reply) if part)
                self.stdout.write(f"{mark} {step.label:<12}{step.milliseconds:>10}  {text}")
                if step.certificate:
                    cert = step.certificate
                    self.stdout.write(
                        f"{'':<28}certificate {cert.subject}, issuer {cert.issuer}, "
                        f"expires {cert.not_after:%Y-%m-%d}, SHA-256 {cert.sha256}"
                    )
        if diagnosis.delivered:
            if not as_json:
                self.stdout.write(
                    self.style.SUCCESS(f"Delivered: the server accepted it for {recipient}.")
                )
            return
        if diagnosis.problem:
            raise CommandError(str(diagnosis.problem), returncode=2)
        refused = ", ".join(f"{a} ({c} {t})" for a, (c, t) in diagnosis.refused.items())
        raise CommandError(f"The server refused the recipient: {refused}", returncode=2)

    def show(self, *, as_json: bool) -> None:
        settings = store.load()
        report = describe(settings)
        if as_json:
            self.stdout.write(json.dumps(report, indent=2, default=str))
            return
        labels = {
            "sender_email": "Sender",
            "sender_name": "Sender name",
            "reply_to": "Reply-To",
            "bounce_address": "Bounce",
            "host": "Server",
            "port": "Port",
            "encryption": "Encryption",
            "auth_method": "Sign-in",
            "username": "User",
            "password": "Password",
            "oauth_provider": "OAuth",
            "oauth_tenant": "Tenant",
            "oauth_client_id": "Client ID",
            "options": "Options",
        }
        for key, label in labels.items():
            value = report[key]
            if key == "options":
                value = json.dumps(value) if value else "(none)"
            self.stdout.write(f"{label + ':':<14}{value if value not in ('', None) else '(blank)'}")
        credential = report["oauth_credential"]
        if credential.get("kind"):
            facts = ", ".join(
                f"{key} {credential[key]}"
                for key in ("subject", "not_after", "thumbprint", "client_email", "expires")
                if credential.get(key)
            )
            self.stdout.write(
                f"{'Credential:':<14}{credential['kind'].replace('_', ' ')}, "
                f"{credential['state']}{': ' + facts if facts else ''}"
            )
        if report["client_certificate"]:
            cert = report["client_certificate"]
            self.stdout.write(
                f"{'Client cert:':<14}{cert['subject']} (valid until {cert['not_after']}, "
                f"SHA-256 {cert['sha256']}, key {cert['key']})"
            )
        for cert in report["trusted_certificates"]:
            self.stdout.write(
                f"{'Trusted cert:':<14}{cert['subject']} (issuer {cert['issuer']}, "
                f"valid until {cert['not_after']}, SHA-256 {cert['sha256']})"
            )
        plan = report["plan"]
        self.stdout.write("")
        if plan:
            self.stdout.write(plan["description"])
            if plan["refusal"]:
                self.stdout.write(self.style.WARNING(plan["refusal"]))
        elif report.get("problem"):
            self.stdout.write(self.style.ERROR(report["problem"]))
        else:
            self.stdout.write("No SMTP server is configured yet, so no mail can be sent.")
        if report["password"] == "unreadable":
            self.stdout.write(
                self.style.ERROR(
                    "The stored password cannot be decrypted with the current keys "
                    "(SECRET_KEY or SMTP_ENCRYPTION_KEYS changed). Enter it again: "
                    "python manage.py smtp_settings set --password-stdin"
                )
            )

    def change(self, options: dict[str, Any]) -> None:
        settings = store.load()
        data = form_data(store.snapshot(settings))
        for flag, field in SET_FLAGS.items():
            if options[flag] is not None:
                data[field] = options[flag]
        if options["trusted_certificate"] is not None:
            data["trusted_certificate"] = read_certificate(options["trusted_certificate"])
        readers = [flag for flag in (*STDIN_FLAGS, *FILE_FLAGS) if options[flag] in (True, "-")]
        if len(readers) > 1:
            raise CommandError(
                "Only one secret can come from standard input at a time; nothing was saved."
            )
        for flag, field in STDIN_FLAGS.items():
            if options[flag]:
                value = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
                if not value:
                    what = field.removeprefix("oauth_").replace("_", " ")
                    raise CommandError(f"No {what} on standard input; nothing was saved.")
                data[field] = value
        for flag, field in FILE_FLAGS.items():
            if options[flag] is not None:
                data[field] = read_certificate(options[flag])
        for flag in CLEAR_FLAGS:
            data[flag] = options[flag]
        form = SmtpSettingsForm(data, instance=settings)
        if not form.is_valid():
            lines = [
                f"{field_label(form, field)}: {message}"
                for field, messages in form.errors.items()
                for message in messages
            ]
            raise CommandError("Nothing was saved.\n" + "\n".join(lines))
        result = form.save(
            actor=None, actor_name=f"{getpass.getuser()} (command line)", source="command line"
        )
        if not result.changes:
            self.stdout.write("Nothing changed.")
            return
        for change in result.changes:
            self.stdout.write(f"{change['label']}: {change['old']} -> {change['new']}")
        if result.password_dropped:
            self.stdout.write(
                self.style.WARNING(
                    store.dropped_password_text(result.password_dropped)
                    + " On the command line: --password-stdin."
                )
            )
        for field, reasons in result.secrets_dropped.items():
            self.stdout.write(self.style.WARNING(store.dropped_secret_text(field, reasons)))
        for warning in form.warnings:
            self.stdout.write(self.style.WARNING(warning))
        plan = store.load().connection_plan()
        if plan:
            saved = store.load()
            missing = not plan.uses_oauth and saved.password_state is PasswordState.NOT_SET
            self.stdout.write(
                self.style.SUCCESS("Saved. ") + plan.describe(password_missing=missing)
            )
            if plan.refusal:
                self.stdout.write(self.style.WARNING(plan.refusal))


def read_certificate(path: str) -> str:
    if path == "":
        return ""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"Cannot read the certificate file {path}: {error}") from None


def field_label(form: SmtpSettingsForm, field: str) -> str:
    flags = {v: k for k, v in (*SET_FLAGS.items(), *FILE_FLAGS.items(), *STDIN_FLAGS.items())}
    flag = flags.get(field, field)
    return "--" + flag.replace("_", "-") if field != "__all__" else "settings"


def describe(settings: SmtpSettings) -> dict[str, Any]:
    """Everything `show` prints, as data. The password appears only as its state."""
    report: dict[str, Any] = {
        field: getattr(settings, field)
        for field in store.EDITABLE
        if field not in ("trusted_certificate", "client_certificate")
    }
    report["password"] = settings.password_state.value
    report["oauth_credential"] = {
        **settings.oauth_credential_info,
        "state": settings.secret_state("oauth_credential_token").value,
    }
    report["client_certificate"] = None
    if settings.client_certificate:
        info = parse_pem_bundle(settings.client_certificate)[0]
        report["client_certificate"] = {
            "subject": info.subject,
            "not_after": info.not_after,
            "sha256": info.sha256,
            "key": settings.secret_state("client_key_token").value,
        }
    report["trusted_certificates"] = []
    if settings.trusted_certificate:
        try:
            report["trusted_certificates"] = [
                dataclasses.asdict(info) for info in parse_pem_bundle(settings.trusted_certificate)
            ]
        except InvalidCertificate as error:
            report["problem"] = str(error)
    report["updated_at"] = settings.updated_at
    report["updated_by"] = settings.updated_by.get_username() if settings.updated_by else None
    report["plan"] = None
    try:
        plan = settings.connection_plan()
    except OptionsError as error:
        report["problem"] = f"The stored options are no longer valid: {error}"
    else:
        if plan:
            report["plan"] = {
                "security": plan.security.value,
                "reason": plan.reason,
                "verify_peer": plan.verify_peer,
                "peer_fingerprint": str(plan.peer_fingerprint) if plan.peer_fingerprint else None,
                "authenticates": plan.authenticates,
                "refusal": plan.refusal,
                "description": plan.describe(
                    password_missing=not plan.uses_oauth
                    and settings.password_state is PasswordState.NOT_SET
                ),
            }
    return report
