"""A password typed for "Send test e-mail", held so that Save stores it.

The password field comes back empty after a test (a password is never rendered into HTML), so
the password is held in the session instead: sealed with the key ring for the binding of the
values it was typed with, for a few minutes. Save adopts it only for settings with that same
binding, so it never goes anywhere the test did not send it.
"""

from __future__ import annotations

import time

from django.contrib.sessions.backends.base import SessionBase

from .keyring import UndecryptablePassword
from .models import SmtpSettings, WrongServerPassword

HOLD_SECONDS = 10 * 60
_KEY = "smtpsettings.typed_password"


def hold(session: SessionBase, candidate: SmtpSettings) -> None:
    """Keep the password sealed in `candidate` (the tested values) for Save."""
    session[_KEY] = {"token": candidate.password_token, "until": time.time() + HOLD_SECONDS}


def is_held(session: SessionBase) -> bool:
    held = session.get(_KEY)
    return bool(held) and held["until"] > time.time()


def take(session: SessionBase, record: SmtpSettings) -> str:
    """The held password if it was typed for `record`'s binding, else "". Forgets it."""
    held = session.pop(_KEY, None)
    if not held or held["until"] <= time.time():
        return ""
    try:
        return SmtpSettings(
            **_binding_fields(record), password_token=held["token"]
        ).reveal_password()
    except (UndecryptablePassword, WrongServerPassword):
        return ""


def forget(session: SessionBase) -> None:
    session.pop(_KEY, None)


def _binding_fields(record: SmtpSettings) -> dict:
    names = ("host", "port", "encryption", "username", "options", "trusted_certificate")
    return {name: getattr(record, name) for name in names}
