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

    def expired(self, created: datetime.datetime, now: datetime.datetime) -> bool:
        return now - created > self.window


# The queue as a whole waits this long at most while the server cannot be reached: a probe
# costs one connection attempt, whatever the queue holds, so it can be frequent.
BREAKER_MAX_DELAY = 300.0


def breaker_delay(first_delay: float, failures: int, rng: random.Random | None = None) -> float:
    """How long the whole queue waits after `failures` connection failures in a row."""
    return RetryPolicy(first_delay=first_delay, max_delay=BREAKER_MAX_DELAY).delay(failures, rng)


# A problem at any of these steps concerns one message; at any other step (resolve, connect,
# TLS, greeting, EHLO, sign-in, token) it concerns the connection, and so the whole queue.
MESSAGE_STEPS = ("mail", "rcpt", "data")
# Problems of the message itself that no retry can change, though no server said 5xx.
MESSAGE_KINDS = ("body-unavailable", "smtputf8-missing")


def refusal(code: int) -> bool:
    """A permanent refusal is a 5xx reply, and only that: a 250 read out of step is never one."""
    return 500 <= code < 600


def refuses(problem: SmtpProblem) -> bool:
    """Whether `problem` fails the message for good: a 5xx reply to its MAIL, RCPT or DATA, or
    something about the message itself (its body is gone, the server cannot take its
    addresses). A connection that failed, a timeout, an interruption never do."""
    if problem.kind in MESSAGE_KINDS:
        return True
    return problem.step in MESSAGE_STEPS and bool(problem.reply) and refusal(problem.reply[0])


def concerns_connection(problem: SmtpProblem) -> bool:
    """The server could not be reached or would not let us in: no message is to blame."""
    return problem.step not in MESSAGE_STEPS and problem.kind not in MESSAGE_KINDS


def answered(problem: SmtpProblem | None) -> bool:
    """The server replied to the message (accepted it, or refused with a 4xx or 5xx)."""
    return problem is None or (bool(problem.reply) and 400 <= problem.reply[0] < 600)


def interrupted(problem: SmtpProblem) -> bool:
    """The transport explains every exception raised inside a step; one that is neither an
    OSError nor a server's reply (a job system's timeout, a bug) was an interruption."""
    return problem.kind == "other" and not problem.temporary


def record_refusals(recipients: list[dict], refused: dict[str, tuple[int, str]]) -> list[dict]:
    """After the server accepted the message: each pending recipient is sent, refused for
    good (5xx) or still pending (a 4xx for that recipient alone)."""
    updated = []
    for entry in recipients:
        entry = dict(entry)
        if entry["status"] == PENDING:
            reply = refused.get(entry["address"])
            if reply is None or reply[0] < 400:
                entry.update(status=SENT, reply="")
            else:
                code, text = reply
                entry.update(status=REFUSED if refusal(code) else PENDING, reply=f"{code} {text}")
        updated.append(entry)
    return updated


def record_problem(recipients: list[dict], problem: SmtpProblem) -> list[dict]:
    """Nobody got the message. A recipient the server answered at RCPT keeps that reply (a
    5xx refuses it); the others share the problem's fate: refused only if `refuses()`."""
    refuse_all = refuses(problem)
    updated = []
    for entry in recipients:
        entry = dict(entry)
        if entry["status"] == PENDING:
            reply = problem.refused.get(entry["address"])
            if reply is not None:
                code, text = reply
                entry.update(status=REFUSED if refusal(code) else PENDING, reply=f"{code} {text}")
            else:
                entry.update(
                    status=REFUSED if refuse_all else PENDING,
                    reply=problem.server_reply or problem.advice,
                )
        updated.append(entry)
    return updated


def give_up(recipients: list[dict]) -> list[dict]:
    """The retry window is over: who is still pending is refused, with the last reply."""
    return [{**r, "status": REFUSED} if r["status"] == PENDING else r for r in recipients]


def pending_addresses(recipients: list[dict]) -> list[str]:
    return [entry["address"] for entry in recipients if entry["status"] == PENDING]


def settle(recipients: list[dict]) -> str:
    """The message's status once no recipient is pending: sent if anyone got it."""
    if any(entry["status"] == PENDING for entry in recipients):
        return "queued"
    return "sent" if any(entry["status"] == SENT for entry in recipients) else "failed"
