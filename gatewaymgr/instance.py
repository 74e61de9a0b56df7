"""Files this installation keeps for itself, under the data directory git ignores."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def read_or_create_secret_key(path: Path) -> str:
    """The installation's secret key, created once so restarts keep sessions and the
    encrypted SMTP password readable."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first: use theirs
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as file:
        file.write(key + "\n")
    return key
