"""A throwaway PostgreSQL server for the test run: initdb in a temporary directory, a loopback
port, removed afterwards.

    python -m tests.pgcluster -- pytest ...   runs the command with DATABASE_URL pointing at it
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

BIN_DIRS = (
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
)


class PostgresMissing(RuntimeError):
    pass


def find(name: str) -> str:
    for directory in BIN_DIRS:
        if (Path(directory) / name).exists():
            return str(Path(directory) / name)
    found = shutil.which(name)
    if not found:
        raise PostgresMissing(
            f"PostgreSQL's {name} is not installed (apt-get install postgresql-15)"
        )
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def temporary_cluster() -> Iterator[str]:
    """Yield a DATABASE_URL for a fresh server; the server and its files are gone afterwards."""
    initdb, pg_ctl = find("initdb"), find("pg_ctl")
    # initdb and pg_ctl refuse to run as root: run them as the postgres user then.
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="gatewaymgr-pg-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    data, log, port = root / "data", root / "server.log", free_port()
    quiet = {"stdout": subprocess.DEVNULL, "check": True, "cwd": root}
    try:
        subprocess.run(
            [
                *as_user,
                initdb,
                "-D",
                data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            **quiet,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*as_user, pg_ctl, "-D", data, "-l", log, "-w", "-o", options, "start"], **quiet
        )
        try:
            # The database the URL names exists, so a bench or `manage.py migrate` can use it
            # as it is; the test run makes its own test_ database beside it.
            createdb = find("createdb")
            subprocess.run(
                [*as_user, createdb, "-h", root, "-p", str(port), "-U", "postgres", "gatewaymgr"],
                **quiet,
            )
            yield f"postgres://postgres@127.0.0.1:{port}/gatewaymgr"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"], **quiet)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    try:
        with temporary_cluster() as url:
            print(f"PostgreSQL test server at {url}", flush=True)
            return subprocess.run(command, env={**os.environ, "DATABASE_URL": url}).returncode
    except PostgresMissing as error:
        print(error, file=sys.stderr)
        return 97


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
