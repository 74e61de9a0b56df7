"""Invitation tokens kept out of the logs.

An accept link (/invite/<token>/) is as good as a password until it is used, so no log may hold
one: not the access log (request line, path, Referer; see gunicorn_logging) and not Django's own
warnings, such as "Gone: /invite/<token>/" for a 410 (settings.LOGGING puts RedactTokens on the
console handler).
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"
# The token after "invite/", also where the path is percent-encoded inside a query string
# (?next=%2Finvite%2F…). A token is URL-safe base64; everything up to the next delimiter goes.
# /invite/join/<id>/, the accept form, holds no secret.
_TOKEN = re.compile(r"(?i)(invite(?:/|%2F))(?!join(?:/|%2F))[^/?&#\s\"%]+")


def redact(text: str) -> str:
    """`text` with every invitation token replaced by [redacted]."""
    return _TOKEN.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    """Redacts tokens in a record's message, after its arguments are put in."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
