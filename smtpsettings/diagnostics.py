""" "Send test e-mail": one message through the settings, with every step shown.

Shared by the settings page and `smtp_settings test`. The transcript holds the steps of the
SMTP dialogue with their time and the server's replies, never the password. With OAuth 2.0 a
Token step comes before AUTH: the token endpoint, its HTTP status and time (or that a shared
token was used), the token's lifetime and granted scope, and a refusal in words with the
provider's code; never the token or the credential (see auth.py and tokencache.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from django.core.mail import EmailMessage
from django.utils import timezone

from .backends import addressed, addressing_of, envelope_address, envelope_sender, transport_for
from .models import SmtpSettings
from .problems import SmtpProblem
from .transport import Step


@dataclass
class Diagnosis:
    recipient: str
    steps: list[Step] = field(default_factory=list)
    problem: SmtpProblem | None = None
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def delivered(self) -> bool:
        """The server accepted the message for the recipient."""
        return self.problem is None and not self.refused

    @property
    def seconds(self) -> float:
        return sum(step.seconds for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "delivered": self.delivered,
            "seconds": round(self.seconds, 3),
            "steps": [
                {
                    **{k: v for k, v in dataclasses.asdict(step).items() if k != "certificate"},
                    "label": step.label,
                    "seconds": round(step.seconds, 4),
                    "milliseconds": step.milliseconds,
                    "certificate": _certificate(step.certificate),
                }
                for step in self.steps
            ],
            "problem": None
            if self.problem is None
            else {
                "step": self.problem.step,
                "kind": self.problem.kind,
                "advice": self.problem.advice,
                "server_reply": self.problem.server_reply,
                "temporary": self.problem.temporary,
                "certificate": _certificate(self.problem.certificate),
            },
            "refused": {k: f"{c} {t}" for k, (c, t) in self.refused.items()},
        }


def _certificate(info) -> dict[str, Any] | None:
    if info is None:
        return None
    data = dataclasses.asdict(info)
    data["not_before"] = info.not_before.isoformat()
    data["not_after"] = info.not_after.isoformat()
    data["names"] = list(info.names)
    return data


def build_test_email(record: SmtpSettings, recipient: str) -> EmailMessage:
    """The test message, addressed as real mail is: the stored sender and Reply-To."""
    message = EmailMessage(
        subject="Gateway Manager test e-mail",
        body=(
            "This is a test e-mail from Gateway Manager.\n\n"
            f"It was sent through {record.host}:{record.port} at "
            f"{timezone.now():%Y-%m-%d %H:%M:%S %Z}. If you can read it, the SMTP settings "
            "work: invitations and notifications will arrive the same way.\n"
        ),
        to=[recipient],
    )
    return addressed(message, addressing_of(record))


def send_test_email(record: SmtpSettings, recipient: str) -> Diagnosis:
    """Send a test message with `record` (saved or not) and report every step."""
    result = Diagnosis(recipient)
    try:
        transport = transport_for(record, observer=result.steps.append)
    except SmtpProblem as problem:
        result.problem = problem
        return result
    message = build_test_email(record, recipient)
    data = message.message().as_bytes(linesep="\r\n")
    # The envelope as real mail has it: the bounce address, international domains in
    # punycode (a server without SMTPUTF8 takes them, as it takes real mail).
    sender = envelope_sender(message, addressing_of(record))
    to = [envelope_address(recipient, message.encoding or "utf-8")]
    try:
        result.refused = transport.send(sender, to, data)
    except SmtpProblem as problem:
        result.problem = problem
    finally:
        transport.close()
    return result
