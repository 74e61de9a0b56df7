"""What each delivery attempt came to, for the metrics (GET /metrics)."""

from __future__ import annotations

import datetime

from smtpsettings.problems import SmtpProblem


def recorded(
    email: object, outcome: str, problem: SmtpProblem | None, at: datetime.datetime
) -> None:
    """Called by the courier inside the transaction that records an attempt of `email`."""
