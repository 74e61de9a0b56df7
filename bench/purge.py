"""Purging a million sent messages: how long, the peak memory of the process that purges, and
what happens to the tables' size.

    .venv-test/bin/python bench/purge.py [--rows 1000000] [--old]
    .venv-test/bin/python -m tests.pgcluster -- .venv-test/bin/python bench/purge.py ...

Fills a database (SQLite in a temporary directory, or the PostgreSQL that DATABASE_URL names)
with --rows sent messages 40 days old, as delivery leaves them (body removed; one recipient row
and one delivery attempt each), plus 1% sent yesterday and 1% still queued with a body, which
must stay. PostgreSQL is filled with COPY, SQLite with executemany (bench/pages.py's writer,
which follows the models' columns). Then runs `manage.py purge_outbox` in a child process and
prints its wall time and peak memory (maximum resident set size, from GNU time), the rows left,
and the sizes of the outbox's tables before and after: on PostgreSQL pg_relation_size (the heap)
and pg_total_relation_size (with indexes and TOAST), after the purge, after a plain VACUUM,
and after writing as many new rows as survived a tenth of the purge (plain VACUUM does not
shrink the files, it makes the space reusable: the new rows fit in it); on SQLite the file and
its free pages (SQLite reuses them; only VACUUM shrinks the file).

--old also runs the purge as it was before issue 14 (one QuerySet.delete() of every row due,
in one transaction) on a fresh fill, in a child process, for the ratio.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if "GATEWAYMGR_DATA_DIR" not in os.environ:  # a fresh SQLite database, not the console's own
    os.environ["GATEWAYMGR_DATA_DIR"] = tempfile.mkdtemp(prefix="gatewaymgr-purge-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaymgr.settings")

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Max  # noqa: E402

from bench.pages import next_id, optional, reset_sequences, write  # noqa: E402  (sets Django up)
from notifications.models import DeliveryAttempt, OutboundEmail  # noqa: E402

POSTGRES = connection.vendor == "postgresql"
NOW = datetime.datetime.now(datetime.UTC)
OLD = NOW - datetime.timedelta(days=40)
STEP = datetime.timedelta(milliseconds=100)
OLD_PURGE = """
import datetime, django
django.setup()
from django.utils import timezone
from notifications.models import OutboundEmail
cutoff = timezone.now() - datetime.timedelta(days=30)
_, deleted = OutboundEmail.objects.filter(status="sent", sent_at__lt=cutoff).delete()
print(f"Deleted {deleted.get(OutboundEmail._meta.label, 0)} sent e-mail(s) (the old purge).")
"""


def fate(n: int) -> str:
    return "queued" if n % 100 == 0 else "recent" if n % 100 == 1 else "old"


def outbox_rows(start: int, stop: int):
    for n in range(start, stop):
        what = fate(n)
        at = NOW - datetime.timedelta(days=1) if what == "recent" else OLD + n * STEP
        sent = what != "queued"
        address = f"user{n}@corp{n % 500}.example.com"
        yield {
            "id": n,
            "created_at": at,
            "category": "invitation",
            "cause_type_id": None,
            "cause_id": "",
            "message_id": f"<{n}@gateway.example.com>",
            "subject": "You are invited to Gateway Manager",
            "envelope_from": "gateway@example.com",
            "recipients": [
                {"address": address, "status": "sent" if sent else "pending", "reply": "250 Ok"}
            ],
            "to_text": address,
            "batch": "",
            "batch_id": None,
            "message_token": "" if sent else "x" * 1800,
            "status": "sent" if sent else "queued",
            "attempts": 1 if sent else 0,
            "next_attempt_at": at,
            "claimed_by": "",
            "lease_until": None,
            "sent_at": at + datetime.timedelta(seconds=2) if sent else None,
            "last_error": "",
        }


def fill(rows: int) -> None:
    start = (OutboundEmail.objects.aggregate(m=Max("pk"))["m"] or 0) + 1
    stop = start + rows
    began = time.monotonic()
    write(OutboundEmail, outbox_rows(start, stop))
    body, recipient = optional("OutboundBody"), optional("OutboundRecipient")
    if body is not None:
        write(
            body, ({"email_id": n, "token": "x" * 1800} for n in range(start, stop) if n % 100 == 0)
        )
    if recipient is not None:
        first = next_id(recipient)
        write(
            recipient,
            (
                {
                    "id": first + n - start,
                    "email_id": n,
                    "address": f"user{n}@corp{n % 500}.example.com",
                    "domain": f"corp{n % 500}.example.com",
                }
                for n in range(start, stop)
            ),
        )
    first = next_id(DeliveryAttempt)
    write(
        DeliveryAttempt,
        (
            {
                "id": first + n - start,
                "email_id": n,
                "at": OLD + n * STEP,
                "worker": "worker-1",
                "outcome": "sent",
                "step": "DATA",
                "reply": "250 2.0.0 Ok: queued as 4F2A1B",
                "advice": "",
            }
            for n in range(start, stop)
            if fate(n) != "queued"
        ),
    )
    reset_sequences(*(m for m in (OutboundEmail, body, recipient, DeliveryAttempt) if m))
    print(f"filled {rows:,} messages in {time.monotonic() - began:.0f} s")


def tables() -> list[str]:
    names = ["OutboundEmail", "OutboundRecipient", "OutboundBody", "DeliveryAttempt"]
    return [m._meta.db_table for name in names if (m := optional(name)) is not None]


def sizes(label: str) -> None:
    with connection.cursor() as cursor:
        if POSTGRES:
            parts = []
            for table in tables():
                cursor.execute(
                    "SELECT pg_relation_size(%s), pg_total_relation_size(%s)", [table, table]
                )
                heap, total = cursor.fetchone()
                parts.append(f"{table.split('_', 1)[1]} {mb(heap)}/{mb(total)}")
            print(f"  {label:<34} heap/total MB: " + ", ".join(parts))
        else:
            cursor.execute("PRAGMA page_count")
            pages = cursor.fetchone()[0]
            cursor.execute("PRAGMA freelist_count")
            free = cursor.fetchone()[0]
            cursor.execute("PRAGMA page_size")
            size = cursor.fetchone()[0]
            print(f"  {label:<34} file {mb(pages * size)} MB, of which free {mb(free * size)} MB")


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def run_child(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB and the last line of a child's output. The child is started
    by GNU time, a small process: a child forked straight from this one would report this
    process's RSS at the fork as its own peak (Linux carries it over into ru_maxrss at exec)."""
    began = time.monotonic()
    with tempfile.NamedTemporaryFile("r") as report:
        child = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", report.name, *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        peak_kb = int(report.read().split()[-1])
    seconds = time.monotonic() - began
    output = (child.stdout + child.stderr).strip()
    if child.returncode != 0:
        print(f"  the child failed after {seconds:.0f} s:\n{output[-600:]}")
    return seconds, peak_kb / 1024, output.splitlines()[-1] if output else ""


def vacuum(analyze: bool = False) -> None:
    with connection.cursor() as cursor:
        if POSTGRES:
            for table in tables():
                verb = "VACUUM ANALYZE" if analyze else "VACUUM"
                cursor.execute(f"{verb} {connection.ops.quote_name(table)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--old", action="store_true", help="also time the purge before issue 14")
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    os.environ["DATABASE_URL"] = os.environ.get("DATABASE_URL") or (
        f"sqlite:///{settings.DATABASES['default']['NAME']}"
    )
    print(f"{connection.vendor}, RETENTION_BATCH_SIZE={settings.RETENTION_BATCH_SIZE}")
    fill(options.rows)
    if POSTGRES:
        vacuum(analyze=True)  # as autovacuum would have, after a year of writes
    sizes("before")
    _, baseline, _ = run_child([sys.executable, "manage.py", "check"])
    print(f"(a manage.py command that only starts Django: peak RSS {baseline:.0f} MB)")
    seconds, peak, said = run_child([sys.executable, "manage.py", "purge_outbox"])
    left = OutboundEmail.objects.count()
    print(f"purge_outbox: {seconds:.1f} s, peak RSS {peak:.0f} MB: {said!r}; {left:,} rows left")
    sizes("after the purge")
    if POSTGRES:
        vacuum()
        sizes("after plain VACUUM")
    fill(options.rows // 10)
    sizes(f"after writing {options.rows // 10:,} new rows")
    if options.old:
        OutboundEmail.objects.filter(status="sent").delete()
        fill(options.rows)
        old_seconds, old_peak, said = run_child([sys.executable, "-c", OLD_PURGE])
        print(f"old purge: {old_seconds:.1f} s, peak RSS {old_peak:.0f} MB: {said!r}")
        print(f"ratio old/new: time {old_seconds / seconds:.1f}x, memory {old_peak / peak:.1f}x")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process, which filled the tables: peak RSS {own:.0f} MB)")


if __name__ == "__main__":
    main()
