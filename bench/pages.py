"""Every list page's time and the data it reads, as the tables grow.

    .venv-test/bin/python bench/pages.py [--sizes 10000,100000,1000000] [--requests 20]
    .venv-test/bin/python -m tests.pgcluster -- .venv-test/bin/python bench/pages.py ...

Fills a database (SQLite in a temporary directory, or the PostgreSQL that DATABASE_URL names)
with the shapes the product writes, growing it to each size in turn: outbox messages (mixed
statuses and categories, invitation and notification recipients, bulk batches, a sealed body of
about 1.35 KB in every row, as in the measurement issue 14 quotes), their delivery attempts, as
many events with their dispatches, up to 200k invitations and 10k users. PostgreSQL is filled
with COPY, SQLite with executemany in big transactions. Columns are read from the Django models,
so the script follows the schema as it changes; a column it has no value for gets the model's
default (and a NOT NULL column without one stops it with the column's name).

Then, for each page, a signed-in superuser asks for it through Django's test client in-process
--requests times (after two warm-ups): p50 and p95 of the whole request, the number of SQL
queries, and the data read: on PostgreSQL every SELECT the view ran, EXPLAIN (ANALYZE, BUFFERS)
again, shared hit + read blocks x 8 KB; on SQLite the virtual machine's steps (thousands, from a
progress handler), the same measure of work the tests use. It prints one table per size and,
at the end, each page's growth from the smallest size to the largest (p95 and data read). Goal
(issue 14): p95 <= 100 ms at 1M rows on PostgreSQL, <= 250 ms on SQLite, and data read that
does not grow.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if "GATEWAYMGR_DATA_DIR" not in os.environ:  # a fresh SQLite database, not the console's own
    os.environ["GATEWAYMGR_DATA_DIR"] = tempfile.mkdtemp(prefix="gatewaymgr-pages-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gatewaymgr.settings")

import django  # noqa: E402

django.setup()

from django.apps import apps  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.core.mail import EmailMessage  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.management.color import no_style  # noqa: E402
from django.db import connection, models, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from gatewaymgr.models import Invitation  # noqa: E402
from notifications.events import CATALOG  # noqa: E402
from notifications.models import (  # noqa: E402
    DeliveryAttempt,
    Dispatch,
    Event,
    Integration,
    OutboundEmail,
    Status,
    seal,
)

POSTGRES = connection.vendor == "postgresql"
STEP = datetime.timedelta(seconds=30)  # 1M messages: about a year of mail
T0 = datetime.datetime.now(datetime.UTC) - 1_000_000 * STEP
CHUNK = 20_000

FIRST = "anna ben chloe david emma felix grace hugo iris jonas karl lena mia noah olga paul"
LAST = "meyer smith garcia kowalski rossi novak dubois jensen silva tanaka brown weber"
FIRST, LAST = FIRST.split(" "), LAST.split(" ")
OPS = [
    "ops@acme.example",
    "oncall@acme.example",
    "api-team@acme.example",
    "security@acme.example",
    "platform@partner-one.example",
    "oncall@partner-two.example",
]


def invitee(n: int) -> str:
    """The n-th invited address: realistic, distinct, spread over 500 company domains."""
    return f"{FIRST[n % 16]}.{LAST[n // 16 % 12]}{n}@corp{n % 500}.example.com"


# -- writing rows in the current schema ---------------------------------------------------------


def columns(model: type[models.Model]) -> list[models.Field]:
    return list(model._meta.concrete_fields)


def prepared_default(model: type[models.Model], f: models.Field) -> object:
    if f.has_default() or f.null or f.blank:
        value = f.get_default() if f.has_default() else (None if f.null else "")
        return f.get_db_prep_save(value, connection)
    raise SystemExit(f"bench/pages.py has no value for {model.__name__}.{f.attname}: add one")


def to_db(f: models.Field, value: object) -> object:
    """A Python value as the driver takes it (JSON as text; SQLite's datetimes as text)."""
    if value is None:
        return None
    if isinstance(f, models.JSONField):
        return value if isinstance(value, str) else json.dumps(value)
    if isinstance(value, datetime.datetime) and not POSTGRES:
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool) and not POSTGRES:
        return int(value)
    return value


def write(model: type[models.Model], rows: Iterable[dict[str, object]]) -> int:
    """Insert rows given as {attname: value}; other columns get the model's default."""
    fields = columns(model)
    defaults = {}
    names: list[str] | None = None
    count = 0
    table = connection.ops.quote_name(model._meta.db_table)

    def tuples() -> Iterator[tuple]:
        nonlocal names, count
        for row in rows:
            if names is None:
                names = [f.attname for f in fields]
                for f in fields:
                    if f.attname not in row:
                        defaults[f.attname] = prepared_default(model, f)
            count += 1
            yield tuple(
                defaults[f.attname] if f.attname in defaults else to_db(f, row[f.attname])
                for f in fields
            )

    quoted = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    with connection.cursor() as cursor:
        if POSTGRES:
            with cursor.cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for values in tuples():
                    copy.write_row(values)
        else:
            marks = ", ".join("?" for _ in fields)
            sql = f"INSERT INTO {table} ({quoted}) VALUES ({marks})"
            stream = tuples()
            while chunk := [v for _, v in zip(range(CHUNK), stream, strict=False)]:
                with transaction.atomic():
                    connection.connection.executemany(sql, chunk)  # sqlite3's own: faster
    return count


def optional(name: str) -> type[models.Model] | None:
    """The notifications model of that name, if the schema has it."""
    try:
        return apps.get_model("notifications", name)
    except LookupError:
        return None


def next_id(model: type[models.Model]) -> int:
    return (model.objects.aggregate(m=models.Max("pk"))["m"] or 0) + 1


def reset_sequences(*models_: type[models.Model]) -> None:
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(no_style(), models_):
            cursor.execute(sql)


# -- the product's shapes ---------------------------------------------------------------------


@dataclass
class Shapes:
    body: str  # one sealed invitation-sized message, reused: sealing 1M bodies takes minutes
    invitation_type: int
    batch_ids: int  # bulk send number k is OutboundBatch id batch_ids + k + 1

    @classmethod
    def make(cls) -> Shapes:
        text = (
            "Hello,\n\nYou are invited to join Gateway Manager, the console of the API gateway "
            "landscape. Follow the link below within 7 days to choose your password:\n\n"
            "https://gateway.example.com/invite/" + "x" * 43 + "/\n\n"
            "The link works once. If you did not expect this invitation, ignore this e-mail.\n"
        ) * 2
        message = EmailMessage("You are invited to Gateway Manager", text, to=["a@example.com"])
        body = seal(message.message().as_bytes(linesep="\r\n"))
        batches = optional("OutboundBatch")
        return cls(
            body=body,
            invitation_type=ContentType.objects.get_for_model(Invitation).pk,
            batch_ids=next_id(batches) - 1 if batches else 0,
        )


@dataclass(frozen=True)
class Message:
    """What the n-th outbox message is: 30% invitations (some in bulk batches), 60%
    notifications to integration addresses, 2% tests, 8% other; mostly sent, with failures,
    cancellations and a waiting tail at the newest end of each fill."""

    category: str
    to: list[str]
    subject: str
    cause: tuple[int | None, str]
    batch: int | None  # the bulk send it belongs to, numbered
    status: str

    @classmethod
    def number(cls, n: int, shapes: Shapes, invitations: int, stop: int) -> Message:
        kind, batch, cause = n % 50, None, (None, "")
        if kind < 15:
            category = "invitation"
            if n % BATCH_EVERY < BATCH_EVERY * 3 // 10:  # the first 30% of every 2,000
                batch = n // BATCH_EVERY
            number = n % max(invitations, 1)
            to, subject = [invitee(number)], "You are invited to Gateway Manager"
            cause = (shapes.invitation_type, str(number + 1))
        elif kind < 45:
            category = "notification"
            to = [OPS[(n + j) % len(OPS)] for j in range(1 + n % 3)]
            spec = list(CATALOG.values())[n % 12]
            subject = f"[Gateway] {spec.label}: orders-api v{n % 97}"
        elif kind < 46:
            category, to, subject = "test", [OPS[0]], "[Gateway] Test notification"
        else:
            category = "other"
            to, subject = [f"user{n % 9000}@acme.example"], f"Password reset for user{n % 9000}"
        fate = n % 100
        status = "failed" if fate < 4 else "cancelled" if fate == 4 else "sent"
        if status == "sent" and stop - n < stop // 500:
            status = "queued"
        return cls(category, to, subject, cause, batch, status)


BATCH_EVERY = 2000  # messages: one bulk invitation among them (tests make it smaller)


def batch_key(number: int) -> str:
    return f"{number:032x}"


def message_id(n: int) -> str:
    return f"<{T0 + n * STEP:%Y%m%d%H%M%S}.{n}@gateway.example.com>"


def outbox_rows(shapes: Shapes, start: int, stop: int, invitations: int) -> Iterator[dict]:
    """The rows of messages start..stop-1, in the old schema's columns and the new (write()
    takes those the current model has: batch key or batch_id, to_text, message_token...)."""
    for n in range(start, stop):
        m = Message.number(n, shapes, invitations, stop)
        at = T0 + n * STEP
        outcome = {"sent": ("sent", "250 2.0.0 Ok: queued as 4F2A1B"), "failed": ("refused", "")}
        state, reply = outcome.get(m.status, ("pending", ""))
        if m.status == "failed":
            reply = f"550 5.1.1 <{m.to[0]}>: Recipient address rejected: User unknown"
        yield {
            "id": n,
            "created_at": at,
            "category": m.category,
            "cause_type_id": m.cause[0],
            "cause_id": m.cause[1],
            "message_id": message_id(n),
            "subject": m.subject,
            "envelope_from": "gateway@example.com",
            "recipients": [{"address": a, "status": state, "reply": reply} for a in m.to],
            "to_text": " ".join(m.to),
            "batch": "" if m.batch is None else batch_key(m.batch),
            "batch_id": None if m.batch is None else shapes.batch_ids + m.batch + 1,
            "message_token": shapes.body,
            "status": m.status,
            "attempts": {"sent": 1, "failed": 2}.get(m.status, 0),
            "next_attempt_at": at,
            "claimed_by": "",
            "lease_until": None,
            "sent_at": at + datetime.timedelta(seconds=2) if m.status == "sent" else None,
            "last_error": reply if m.status == "failed" else "",
        }


def body_rows(shapes: Shapes, start: int, stop: int) -> Iterator[dict]:
    """Bodies in a table of their own (after issue 14): the same sealed body for every message,
    as the old schema had it in every row."""
    for n in range(start, stop):
        yield {"email_id": n, "token": shapes.body}


def recipient_rows(shapes: Shapes, start: int, stop: int, invitations: int, first_id: int):
    pk = first_id
    for n in range(start, stop):
        for address in Message.number(n, shapes, invitations, stop).to:
            yield {"id": pk, "email_id": n, "address": address, "domain": address.split("@")[1]}
            pk += 1


def batch_rows(shapes: Shapes, start: int, stop: int) -> list[dict]:
    """The bulk sends of messages start..stop-1 not written yet (one may span two fills). A
    list, not a generator: the query must not run while COPY holds the connection."""
    numbers = range(start // BATCH_EVERY, (stop - 1) // BATCH_EVERY + 1)
    ids = [shapes.batch_ids + number + 1 for number in numbers]
    made = set(optional("OutboundBatch").objects.filter(id__in=ids).values_list("id", flat=True))
    return [
        {
            "id": shapes.batch_ids + number + 1,
            "key": batch_key(number),
            "subject": "You are invited to Gateway Manager",
            "total": BATCH_EVERY * 3 // 10 * 15 // 50,  # its invitations
            "created_at": T0 + number * BATCH_EVERY * STEP,
        }
        for number in numbers
        if shapes.batch_ids + number + 1 not in made
    ]


def attempt_rows(start: int, stop: int, first_id: int) -> Iterator[dict]:
    pk = first_id
    for n in range(start, stop):
        fate = n % 100
        at = T0 + n * STEP
        if fate < 4:
            tries = [("retry", "451 4.3.0 Try again later"), ("failed", "550 5.1.1 User unknown")]
        elif fate == 4 or stop - n < stop // 500:
            tries = []
        else:
            tries = [("sent", "250 2.0.0 Ok: queued as 4F2A1B")]
        for outcome, reply in tries:
            yield {
                "id": pk,
                "email_id": n,
                "at": at,
                "worker": "worker-1",
                "outcome": outcome,
                "step": "DATA",
                "reply": reply,
                "advice": "",
            }
            pk += 1


def event_rows(start: int, stop: int) -> Iterator[dict]:
    types = list(CATALOG)
    for n in range(start, stop):
        # user.invited and api.deployed dominate; the rest are rarer
        kind = types[8] if n % 3 == 0 else types[0] if n % 3 == 1 else types[n % len(types)]
        yield {
            "id": n,
            "type": kind,
            "payload": {"api": f"orders-api v{n % 97}", "environment": "production"},
            "source": ("product", "api", "api", "command")[n % 4],
            "actor": "deploy-bot" if n % 4 else "alice",
            "created_at": T0 + n * STEP,
        }


def dispatch_rows(start: int, stop: int, first_id: int, integrations: list[int]) -> Iterator[dict]:
    """The notification messages start..stop-1, each queued by an event of the same number."""
    pk = first_id
    for n in range(start, stop):
        if 15 <= n % 50 < 45:
            yield {
                "id": pk,
                "event_id": n,
                "integration_id": integrations[n % len(integrations)],
                "integration_name": f"Integration {n % len(integrations)}",
                "email_id": n,
            }
            pk += 1


def invitation_rows(start: int, stop: int, first_id: int) -> Iterator[dict]:
    now = datetime.datetime.now(datetime.UTC)
    span = (now - T0) / 200_000
    for n in range(start, stop):
        sent = T0 + n * span
        fate = n % 20
        yield {
            "id": first_id + n - start,
            "email": invitee(n),
            "name": "",
            "token_hash": hashlib.sha256(str(n).encode()).hexdigest(),
            "valid_days": 7,
            "invited_by_id": None,
            "invited_by_name": "alice",
            "created_at": sent,
            "sent_at": sent,
            "expires_at": sent + datetime.timedelta(days=7),
            "accepted_at": sent + datetime.timedelta(hours=3) if fate < 10 else None,
            "user_id": None,
            "revoked_at": sent + datetime.timedelta(days=1) if fate == 10 else None,
            "revoked_by_name": "alice" if fate == 10 else "",
        }


def user_rows(start: int, stop: int) -> Iterator[dict]:
    for n in range(start, stop):
        yield {
            "id": n,
            "password": "!unusable",
            "last_login": None,
            "is_superuser": False,
            "username": f"user{n}",
            "first_name": FIRST[n % 16].title(),
            "last_name": LAST[n % 12].title(),
            "email": f"user{n}@acme.example",
            "is_staff": False,
            "is_active": True,
            "date_joined": T0 + n * STEP * 100,
        }


@dataclass
class Sizes:
    outbox: int
    events: int
    invitations: int
    users: int

    @classmethod
    def at(cls, n: int) -> Sizes:
        return cls(
            outbox=n, events=n, invitations=min(n // 5, 200_000), users=min(n // 100, 10_000)
        )


def grow(shapes: Shapes, target: Sizes, vacuum: bool = True) -> None:
    """Fill up to `target` from what is there (ids continue where the last size stopped),
    then refresh the planner's statistics (tests/test_pages_at_scale.py: inside a transaction,
    where PostgreSQL cannot VACUUM)."""
    have_outbox = OutboundEmail.objects.count()
    have_invitations = Invitation.objects.count()
    have_users = User.objects.filter(username__startswith="user").count()
    integrations = list(Integration.objects.values_list("pk", flat=True))
    if not integrations:
        write(
            Integration,
            (
                {
                    "id": k + 1,
                    "name": f"Integration {k}",
                    "recipients": OPS[k % 6 : k % 6 + 2],
                    "all_events": k == 0,
                    "events": list(CATALOG)[k : k + 3],
                    "subject_prefix": "[Gateway]",
                    "enabled": True,
                    "created_at": T0,
                    "updated_at": T0,
                }
                for k in range(8)
            ),
        )
        integrations = list(range(1, 9))
    started = time.monotonic()
    # Invitations first: the outbox's invitation messages name them as their cause.
    write(Invitation, invitation_rows(have_invitations, target.invitations, next_id(Invitation)))
    if target.users:
        write(User, user_rows(have_users + 2, target.users + 2))
    # Message n is caused by event n (when it is a notification): one id range for both,
    # past every id already taken (a test's own rows, sequences that a rollback left behind).
    first = max(next_id(OutboundEmail), next_id(Event))
    stop = first + max(target.outbox - have_outbox, 0)
    # Tables of the current schema (issue 14 added them), filled when the models exist.
    batches, bodies, recipients = (
        optional("OutboundBatch"),
        optional("OutboundBody"),
        optional("OutboundRecipient"),
    )
    if batches:
        write(batches, batch_rows(shapes, first, stop))
    write(OutboundEmail, outbox_rows(shapes, first, stop, target.invitations))
    if bodies:
        write(bodies, body_rows(shapes, first, stop))
    if recipients:
        write(
            recipients,
            recipient_rows(shapes, first, stop, target.invitations, next_id(recipients)),
        )
    write(DeliveryAttempt, attempt_rows(first, stop, next_id(DeliveryAttempt)))
    write(Event, event_rows(first, stop))
    write(Dispatch, dispatch_rows(first, target.outbox + 1, next_id(Dispatch), integrations))
    reset_sequences(
        Invitation,
        User,
        OutboundEmail,
        DeliveryAttempt,
        Event,
        Dispatch,
        *[m for m in (batches, recipients) if m],
    )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE" if POSTGRES and vacuum else "ANALYZE")
    print(f"  filled to {target} in {time.monotonic() - started:.0f} s", flush=True)


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Figure:
    p50: float
    p95: float
    queries: int
    read_kb: float  # PostgreSQL: KB of shared buffers; SQLite: thousands of VM steps


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def blocks_read(sql: str) -> int:
    """Shared buffers (hit + read) the statement touches, by EXPLAIN (ANALYZE, BUFFERS)."""
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    return plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)


def measure(client: Client, url: str, requests: int) -> Figure:
    for _ in range(2):
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
    durations = []
    for _ in range(requests):
        started = time.perf_counter()
        client.get(url)
        durations.append((time.perf_counter() - started) * 1000)
    steps = [0]
    if not POSTGRES:  # SQLite has no buffer counts: its virtual machine's steps stand in
        connection.connection.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 1000)
    try:
        with CaptureQueriesContext(connection) as captured:
            client.get(url)
    finally:
        if not POSTGRES:
            connection.connection.set_progress_handler(None, 0)
    if POSTGRES:
        selects = [
            q["sql"] for q in captured.captured_queries if q["sql"].lstrip()[:6].upper() == "SELECT"
        ]
        read = sum(blocks_read(sql) for sql in selects) * 8
    else:
        read = float(steps[0])  # thousands of steps
    return Figure(statistics.median(durations), percentile(durations, 0.95), len(captured), read)


def link(html: str, label: str) -> str | None:
    """The href of the pager link whose text starts with `label` (e.g. "Oldest")."""
    for href, text in re.findall(r'<a href="(\?[^"]*)"[^>]*>([^<]*)</a>', html):
        if text.strip(" ←→«»").startswith(label):
            return href.replace("&amp;", "&")
    return None


def oldest_url(client: Client, base: str) -> str:
    """The last page: the "Oldest" link if the page has one, else ?page=<number of pages>."""
    html = client.get(base).content.decode()
    found = link(html, "Oldest")
    if found:
        return base + found
    pages = re.search(r"Page \d+ of ([\d,]+)", html)
    return f"{base}?page={pages.group(1).replace(',', '') if pages else 1}"


def older_url(client: Client, base: str) -> str:
    html = client.get(base).content.decode()
    return base + (link(html, "Older") or "?page=2")


def pages(client: Client, sizes: Sizes) -> list[tuple[str, str]]:
    exact = invitee(sizes.invitations // 2)
    return [
        ("Outbox", "/outbox/"),
        ("Outbox, next page", older_url(client, "/outbox/")),
        ("Outbox, oldest page", oldest_url(client, "/outbox/")),
        *[(f"Outbox status={s}", f"/outbox/?status={s}") for s in Status.values],
        ("Outbox category=invitation", "/outbox/?category=invitation"),
        ("Outbox category=test", "/outbox/?category=test"),
        ("Outbox search: an address", f"/outbox/?q={exact}"),
        ("Outbox search: @domain", "/outbox/?q=%40corp7.example.com"),
        ("Outbox search: start", "/outbox/?q=oncall"),
        ("Outbox search: @common domain", "/outbox/?q=%40acme.example"),
        ("Outbox search: Message-ID", f"/outbox/?q={quote(message_id(sizes.outbox // 2))}"),
        ("Outbox search: no match", "/outbox/?q=nobody%40nowhere.example"),
        ("Outbox failed + search", "/outbox/?status=failed&q=%40corp7.example.com"),
        ("Events", "/events/"),
        ("Events, next page", older_url(client, "/events/")),
        ("Events, oldest page", oldest_url(client, "/events/")),
        ("Events type=user.invited", "/events/?type=user.invited"),
        ("Events type=api.retired (rare)", "/events/?type=api.retired"),
        ("Users & invitations", "/users/"),
        ("Integrations", "/integrations/"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=20)
    options = parser.parse_args()
    sizes = [int(s) for s in options.sizes.split(",")]
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    call_command("migrate", verbosity=0)
    database = "PostgreSQL" if POSTGRES else "SQLite"
    print(f"{database}, {options.requests} requests per page, Django test client in-process")
    admin = User.objects.create_superuser("bench-admin", "admin@acme.example", "pw")
    client = Client()
    client.force_login(admin)
    shapes = Shapes.make()
    print(f"  sealed body: {len(shapes.body)} characters in every row")
    results: dict[int, dict[str, Figure]] = {}
    for n in sizes:
        target = Sizes.at(n)
        grow(shapes, target)
        results[n] = {}
        print(
            f"\n{database}: {n:,} outbox messages, {target.events:,} events, "
            f"{target.invitations:,} invitations, {target.users:,} users"
        )
        print(f"  {'page':34} {'p50 ms':>8} {'p95 ms':>8} {'queries':>8} {'read':>10}")
        for name, url in pages(client, target):
            figure = measure(client, url, options.requests)
            results[n][name] = figure
            read = size_text(figure.read_kb) if POSTGRES else f"{figure.read_kb:,.0f}k steps"
            print(
                f"  {name:34} {figure.p50:8.1f} {figure.p95:8.1f} {figure.queries:8d} {read:>10}",
                flush=True,
            )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"\nGrowth from {small:,} to {large:,} rows (p95, data read):")
        for name, figure in results[large].items():
            before = results[small].get(name)
            if before is None:
                continue
            reads = (
                f"  read x{figure.read_kb / before.read_kb:.1f}"
                if figure.read_kb and before.read_kb
                else ""
            )
            print(f"  {name:34} p95 x{figure.p95 / before.p95:5.1f}{reads}")


def size_text(kb: float) -> str:
    return f"{kb / 1024:.1f} MB" if kb >= 1024 else f"{kb:.0f} KB"


if __name__ == "__main__":
    main()
