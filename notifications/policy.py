"""Delivery decisions, free of I/O: when to retry, and what a send did to each recipient."""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass

from smtpsettings.problems import SmtpProblem

PENDING, SENT, REFUSED = "pending", "sent", "refused"


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: float = 30.0  # seconds before the first retry
    max_delay: float = 3600.0  # retries are at least hourly
    window: datetime.timedelta = datetime.timedelta(hours=24)  # then give up

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with jitter, so a recovering server is not hit by every
        queued message at the same second."""
        base = min(self.max_delay, self.first_delay * 2 ** max(0, attempts - 1))
        return base * (0.5 + (rng or random).random() / 2)

    def next_attempt(
        self, created: datetime.datetime, now: datetime.datetime, attempts: int
    ) -> datetime.datetime | None:
        """When to try again, or None when the retry window is over."""
        when = now + datetime.timedelta(seconds=self.delay(attempts))
        return when if when - created <= self.window else None


def record_refusals(recipients: list[dict], refused: dict[str, tuple[int, str]]) -> list[dict]:
    """After the server accepted the message: each pending recipient is sent, refused for
    good (5xx) or still pending (a 4xx for that recipient alone)."""
    updated = []
    for entry in recipients:
        entry = dict(entry)
        if entry["status"] == PENDING:
            reply = refused.get(entry["address"])
            if reply is None:
                entry.update(status=SENT, reply="")
            else:
                code, text = reply
                entry.update(
                    status=PENDING if 400 <= code < 500 else REFUSED, reply=f"{code} {text}"
                )
        updated.append(entry)
    return updated


def record_problem(recipients: list[dict], problem: SmtpProblem) -> list[dict]:
    """Nobody got the message. Permanent problems refuse every pending recipient; temporary
    ones leave them pending."""
    updated = []
    for entry in recipients:
        entry = dict(entry)
        if entry["status"] == PENDING:
            reply = problem.refused.get(entry["address"])
            code = reply[0] if reply else (problem.reply[0] if problem.reply else 0)
            text = f"{reply[0]} {reply[1]}" if reply else problem.server_reply
            if (reply and 400 <= code < 500) or (not reply and problem.temporary):
                entry.update(reply=text or problem.advice)
            else:
                entry.update(status=REFUSED, reply=text or problem.advice)
        updated.append(entry)
    return updated


def pending_addresses(recipients: list[dict]) -> list[str]:
    return [entry["address"] for entry in recipients if entry["status"] == PENDING]


def settle(recipients: list[dict]) -> str:
    """The message's status once no recipient is pending: sent if anyone got it."""
    if any(entry["status"] == PENDING for entry in recipients):
        return "queued"
    return "sent" if any(entry["status"] == SENT for entry in recipients) else "failed"
