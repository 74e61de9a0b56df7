"""Bulk invitations at scale (issue 14): a paste of 10,000 addresses on the Users page with
200,000 invitations already in the table.

    .venv/bin/python bench/bulk_invite.py [--existing 200000] [--addresses 10000]
    .venv/bin/python -m tests.pgcluster -- .venv/bin/python bench/bulk_invite.py

Each measurement runs in a child process of its own, which prints its wall time, the SQL
statements it ran and its peak memory (ru_maxrss, Django and the data included):
  page     the POST of the Users page with all the addresses, as a browser sends it: past
           INLINE_MAX it saves the submission and answers; goal under 5 s and 200 MB;
  worker   the task that invites that submission, chunk by chunk (run_batch);
  inline   invite() of INLINE_MAX fresh addresses, the most a request does itself;
  reinvite invite() of INLINE_MAX addresses that all have an open invitation already.
The database is SQLite in a temporary directory, or DATABASE_URL (PostgreSQL).
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GATEWAYMGR_DATA_DIR", tempfile.mkdtemp(prefix="gatewaymgr-bench-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaymgr.settings")
os.environ.setdefault("SECRET_KEY", "bench-secret-key-not-for-production-0123456789abcdef")


import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.utils import timezone  # noqa: E402

from gatewaymgr import invitations  # noqa: E402
from gatewaymgr.addresses import Invitee  # noqa: E402
from gatewaymgr.models import Invitation  # noqa: E402
from notifications.models import Integration  # noqa: E402

INSERT_ROWS = 5_000


def seed(existing: int, users: int, integration: bool) -> None:
    """The database as a year of inviting leaves it: `existing` invitations, most of them
    accepted or expired, a fifth still open, `users` users and an administrator."""
    call_command("migrate", verbosity=0)
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    User.objects.bulk_create(
        [User(username=f"user{n:05}", email=f"user{n}@example.com") for n in range(users)],
        batch_size=INSERT_ROWS,
    )
    if integration:
        Integration.objects.create(
            name="People", recipients=["hr@example.com"], events=["user.invited"]
        )
    now = timezone.now()
    for start in range(0, existing, INSERT_ROWS):
        rows = []
        for number in range(start, min(existing, start + INSERT_ROWS)):
            sent = now - datetime.timedelta(minutes=number)
            rows.append(
                Invitation(
                    email=f"old{number}@example.com",
                    token_hash=f"{number:064x}",
                    sent_at=sent,
                    created_at=sent,
                    expires_at=sent + datetime.timedelta(days=7),
                    accepted_at=sent if number % 5 else None,
                )
            )
        Invitation.objects.bulk_create(rows)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def fresh(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{number}@example.com" for number in range(count)]


def measure(what: str, count: int) -> dict:
    """One measurement, in this (child) process."""
    admin = User.objects.get(username="admin")
    statements = 0
    sizes: list[int] = []

    def counted(execute, sql, params, many, context):
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    # Counted, not kept: keeping each statement's text would add to the memory measured.
    with connection.execute_wrapper(counted):
        started = time.perf_counter()
        if what == "page":
            client = Client(HTTP_HOST="localhost")
            client.force_login(admin)
            box = "\n".join(fresh(count, "new"))
            response = client.post("/users/", {"addresses": box, "valid_days": "7"})
            assert response.status_code in (200, 302), response.status_code
        elif what == "worker":
            for batch in invitations.unfinished_batches():
                invitations.run_batch(batch.pk)
        elif what == "inline":
            invitations.invite([Invitee(a) for a in fresh(count, "inline")], inviter=admin)
        elif what == "view":
            client = Client(HTTP_HOST="localhost")
            client.force_login(admin)
            for query in ("", "?status=expired", "?users_page=100"):
                sizes.append(len(client.get("/users/" + query).content))
            older = re.search(r'href="(\?[^"]*older=[^"]*)"', client.get("/users/").text)
            if older:
                sizes.append(len(client.get("/users/" + html.unescape(older.group(1))).content))
            count = len(sizes)  # pages viewed
        elif what == "reinvite":
            # The open ones among the existing invitations (every fifth).
            again = [f"old{number}@example.com" for number in range(0, 5 * count, 5)]
            invitations.invite([Invitee(a) for a in again], inviter=admin)
        seconds = time.perf_counter() - started
    return {
        "html_kb": sum(sizes) / 1024 if what == "view" else 0,
        "what": what,
        "addresses": count,
        "seconds": round(seconds, 3),
        "statements": statements,
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def child(what: str, count: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", what, "--addresses", str(count)],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    if done.returncode:
        sys.exit(f"{what} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--existing", type=int, default=200_000)
    parser.add_argument("--addresses", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument(
        "--integration", action="store_true", help="an integration gets every user.invited"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.addresses)))
        return
    started = time.perf_counter()
    seed(args.existing, args.users, args.integration)
    print(
        f"{connection.vendor}: {args.existing:,} invitations and {args.users:,} users seeded in "
        f"{time.perf_counter() - started:.1f} s"
        + (", one integration on user.invited" if args.integration else "")
    )
    inline = getattr(invitations, "INLINE_MAX", 1_000)
    runs = [("view", 1), ("inline", inline), ("reinvite", inline), ("page", args.addresses)]
    if hasattr(invitations, "run_batch"):
        runs.append(("worker", args.addresses))
    for what, count in runs:
        result = child(what, count)
        if what == "view":
            print(
                f"Users page: {result['addresses']} views (first, expired, users page 100, "
                f"older) in {result['seconds']:.2f} s, {result['statements']} statements, "
                f"{result['html_kb']:.0f} KB of HTML in all"
            )
            continue
        print(
            f"{what:9} {count:>6,} addresses: {result['seconds']:7.2f} s, "
            f"{result['statements']:>6,} statements "
            f"({result['statements'] / count:.3f} per address), "
            f"peak {result['peak_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
