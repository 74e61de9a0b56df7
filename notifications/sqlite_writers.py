"""On SQLite, the API's write transactions wait their turn in a queue the kernel keeps.

SQLite lets one writer in at a time; a process that finds the database locked sleeps and tries
again (after 1, 2, 5, 10... ms), so it wakes long after the other's commit, and two gunicorn
workers posting events took turns slower than one alone. An exclusive flock() on a file beside
the database wakes the next writer as soon as the previous one lets go. It only orders the API's
writers among themselves: SQLite's own lock still decides, so correctness never rests on it
(a worker's writes, another thread of this process, or a platform without flock() just wait
SQLite's way). Nothing happens on other databases.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

try:
    import fcntl
except ImportError:  # not on this platform: SQLite's own waiting only
    fcntl = None

_files = threading.local()  # one open file per thread: a flock() is per open file


def queue_path() -> Path | None:
    """The file whose lock the writers queue on, beside the database: none for a database in
    memory or on another server."""
    if connection.vendor != "sqlite" or fcntl is None:
        return None
    return _path_beside(str(connection.settings_dict["NAME"]))


@functools.lru_cache(maxsize=8)
def _path_beside(name: str) -> Path | None:
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    return Path(name + "-api-writers")


@contextlib.contextmanager
def queue() -> Iterator[None]:
    """Hold the writers' queue for the block (a no-op but on SQLite)."""
    path = queue_path()
    if path is None:
        yield
        return
    handle = getattr(_files, str(path), None)
    if handle is None:
        handle = open(path, "a+b")  # noqa: SIM115  (kept open: the lock lives on it)
        setattr(_files, str(path), handle)
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def turn() -> contextlib.AbstractContextManager[None]:
    """queue() for a write transaction about to begin; nothing inside one already, which may
    hold SQLite's lock: waiting for the queue then could wait for a writer that waits for us."""
    return contextlib.nullcontext() if connection.in_atomic_block else queue()
