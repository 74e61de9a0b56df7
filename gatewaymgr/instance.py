"""Files this installation keeps for itself, under the data directory git ignores.

They hold secrets (the secret key signs sessions and unlocks the SMTP password; the database
holds sessions), so they are owner-only: the directory 0700, the files 0600. New ones are made
so; ones left readable by an earlier version are tightened when the product starts.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

OTHERS = 0o077  # the group and other permission bits
FIRST_ADMIN_PASSWORD = "first-admin-password"


def make_data_dir(path: Path) -> None:
    """The data directory, created owner-only (the umask can only take bits away)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def create_owner_only(path: Path, text: str = "") -> bool:
    """Create `path` as a 0600 file holding `text`; False when it exists already."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return True


def read_or_create_secret_key(path: Path) -> str:
    """The installation's secret key, created once so restarts keep sessions and the
    encrypted SMTP password readable."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    make_data_dir(path.parent)
    key = secrets.token_urlsafe(50)
    if not create_owner_only(path, key + "\n"):  # another process created it first: use theirs
        return path.read_text().strip()
    return key


def sqlite_files(database: Path) -> list[Path]:
    """The database file and the journal files SQLite keeps beside it in WAL mode."""
    return [database, Path(f"{database}-wal"), Path(f"{database}-shm")]


def tighten(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """Take the group and other bits off each existing path; (path, former mode) for each
    one changed."""
    changed = []
    for path in paths:
        try:
            mode = path.stat().st_mode & 0o7777
            if mode & OTHERS:
                path.chmod(mode & ~OTHERS)
                changed.append((path, mode))
        except FileNotFoundError:
            continue
        except OSError as error:  # e.g. owned by another user: say so, keep starting
            logger.warning("Could not make %s owner-only: %s", path, error)
    return changed


def secure_data(data_dir: Path, sqlite_databases: Iterable[Path]) -> list[tuple[Path, int]]:
    """Make the data directory and the secret files in it owner-only, and create each SQLite
    database file owner-only before SQLite does (it would use 0644; its -wal and -shm files
    then get the database file's mode). Returns what had to be tightened."""
    make_data_dir(data_dir)
    files = [data_dir / "secret_key", data_dir / FIRST_ADMIN_PASSWORD]
    for database in sqlite_databases:
        if database.parent.is_dir():
            create_owner_only(database)
        files += sqlite_files(database)
    return tighten([data_dir, *files])


def describe(changed: list[tuple[Path, int]]) -> str:
    return "Tightened to owner-only access (others could read them): " + ", ".join(
        f"{path} (was {mode:04o})" for path, mode in changed
    )
