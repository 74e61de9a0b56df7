"""The durable outbox as a Django e-mail backend.

    EMAIL_BACKEND = "notifications.backends.OutboxBackend"

send_messages() stores each message as an OutboundEmail row, its body encrypted with the key
ring (smtpsettings.keyring) in an OutboundBody, its recipients in OutboundRecipient rows (for
searching) and, for more than one message, an OutboundBatch; all set-based (a few INSERTs per
thousand messages) inside the caller's database transaction and, once that transaction commits,
wakes a worker with a task. So a web request never talks to an SMTP server, a rolled-back
invitation sends nothing, and nothing is lost when the SMTP server, a worker or the task queue
is down: workers find due mail in the database on their own (notifications/worker.py).

Say what a message is for with `email.outbox_category` (see notifications.models.Category)
and link it to what caused it with `email.outbox_cause` (any model instance); `queue_email()`
does both.
"""

from __future__ import annotations

import random
import re
import sys
import uuid
from collections.abc import Sequence
from email.generator import BytesGenerator
from email.message import Message
from io import BytesIO

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connection, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from smtpsettings import store
from smtpsettings.backends import (
    Addressing,
    addressed,
    addressing_of,
    envelope_address,
    envelope_sender,
)

from . import sqlite_writers
from .models import (
    Category,
    OutboundBatch,
    OutboundBody,
    OutboundEmail,
    OutboundRecipient,
    seal,
)
from .policy import PENDING

# Outbox rows per INSERT: a bounded statement (and number of parameters) at 10,000 messages a
# call. Bodies and recipients go by executemany(), one row at a time.
EMAILS_PER_INSERT = 500


def queue_email(
    message: EmailMessage, *, category: str = Category.OTHER, cause: models.Model | None = None
) -> OutboundEmail:
    """Store one message in the outbox (in the current transaction) and return its row."""
    message.outbox_category = category
    message.outbox_cause = cause
    rows = OutboxBackend().store([message])
    return rows[0]


class OutboxBackend(BaseEmailBackend):
    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        try:
            return len(self.store(email_messages))
        except Exception:
            if not self.fail_silently:
                raise
            return 0

    def store(self, email_messages: Sequence[EmailMessage]) -> list[OutboundEmail]:
        """Store the messages that have recipients, in the current transaction, and return
        their rows (bodies attached, so message_bytes() needs no query)."""
        messages = [m for m in email_messages if m.recipients()]
        if not messages:
            return []
        addressing = stored_addressing()
        prepared = [self._prepare(message, addressing) for message in messages]
        rows = [row for row, _, _ in prepared]
        # Everything but the statements themselves is done before the transaction begins: on
        # SQLite it holds the only write lock, which the workers recording deliveries wait for.
        batch = None
        if len(rows) > 1:
            batch = OutboundBatch(key=uuid.uuid4().hex, subject=rows[0].subject, total=len(rows))
        inserts = _Inserts(connection, rows)
        with sqlite_writers.turn(), transaction.atomic():
            if batch is not None:
                batch.save(force_insert=True)
                for row in rows:
                    row.batch = batch
            ids = inserts.emails(batch)
            bodies, recipients = [], []
            for (row, token, addresses), pk in zip(prepared, ids, strict=True):
                row.pk = pk
                row._state.adding, row._state.db = False, connection.alias
                row.body = OutboundBody(token=token)  # sets body.email, kept on the row
                bodies.append((pk, token))
                recipients += [(pk, a, a.rpartition("@")[2]) for a in addresses]
            inserts.many(OutboundBody, ("email", "token"), bodies)
            inserts.many(OutboundRecipient, ("email", "address", "domain"), recipients)
            transaction.on_commit(enqueue_delivery)
        return rows

    @staticmethod
    def _prepare(
        message: EmailMessage, addressing: Addressing
    ) -> tuple[OutboundEmail, str, list[str]]:
        """The row, the sealed body and the lower-case addresses to search by (no query:
        ContentType.objects caches its look-ups)."""
        # The stored sender, Reply-To and bounce address, as StoredSettingsBackend sets them.
        message = addressed(message, addressing)
        encoding = message.encoding or settings.DEFAULT_CHARSET
        mime = message.message()
        cause = getattr(message, "outbox_cause", None)
        recipients = dict.fromkeys(envelope_address(a, encoding) for a in message.recipients())
        row = OutboundEmail(
            category=getattr(message, "outbox_category", Category.OTHER),
            cause_type=ContentType.objects.get_for_model(cause) if cause is not None else None,
            cause_id=str(cause.pk) if cause is not None else "",
            message_id=mime["Message-ID"] or "",
            subject=str(message.subject)[:255],
            envelope_from=envelope_sender(message, addressing),
            recipients=[{"address": a, "status": PENDING, "reply": ""} for a in recipients],
        )
        token = seal(message_bytes(mime))
        return row, token, list(dict.fromkeys(a.lower() for a in recipients))


class _Inserts:
    """The outbox's INSERTs as plain SQL, their values prepared up front: the ORM's
    bulk_create() prepares each value while the transaction is open, which cost more than
    running the statements."""

    def __init__(self, db: BaseDatabaseWrapper, rows: list[OutboundEmail]) -> None:
        self.db = db
        opts = OutboundEmail._meta
        fields = [f for f in opts.concrete_fields if f is not opts.pk]
        self.batch_column = fields.index(opts.get_field("batch"))
        self.columns = [f.column for f in fields]
        self.values = [
            [f.get_db_prep_save(f.pre_save(row, True), db) for f in fields] for row in rows
        ]

    def emails(self, batch: OutboundBatch | None) -> list[int]:
        """INSERT the rows (in the batch), EMAILS_PER_INSERT per statement; their ids in order."""
        quote = self.db.ops.quote_name
        ids: list[int] = []
        for start in range(0, len(self.values), EMAILS_PER_INSERT):
            chunk = self.values[start : start + EMAILS_PER_INSERT]
            params = []
            for values in chunk:
                values[self.batch_column] = batch.pk if batch is not None else None
                params += values
            row = "(" + ", ".join(["%s"] * len(self.columns)) + ")"
            sql = (
                f"INSERT INTO {quote(OutboundEmail._meta.db_table)}"
                f" ({', '.join(quote(c) for c in self.columns)})"
                f" VALUES {', '.join([row] * len(chunk))} RETURNING {quote('id')}"
            )
            with self.db.cursor() as cursor:
                cursor.execute(sql, params)
                # Ids grow in the order the rows go in; RETURNING's own order is not promised.
                ids += sorted(pk for (pk,) in cursor.fetchall())
        return ids

    def many(self, model: type[models.Model], names: tuple[str, ...], rows: list[tuple]) -> None:
        if not rows:
            return
        quote = self.db.ops.quote_name
        columns = [quote(model._meta.get_field(name).column) for name in names]
        sql = (
            f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(columns)})"
            f" VALUES ({', '.join(['%s'] * len(columns))})"
        )
        with self.db.cursor() as cursor:
            cursor.executemany(sql, rows)


# A header the compat32 policy (Django's messages) writes as it is: printable ASCII, single
# spaces between words, and short enough (with its name) that no folding happens.
_PLAIN_HEADER = re.compile(r"[!-~]+(?: [!-~]+)*")
_BOUNDARY_DIGITS = len(str(sys.maxsize - 1))


class _MessageGenerator(BytesGenerator):
    """The bytes Django's `as_bytes()` gives, at about half the cost: the standard generator
    folds every header through an email.header.Header (most of its time) and compiles a new
    regular expression per message to check its random boundary."""

    def _write_headers(self, msg: Message) -> None:
        policy = self.policy
        limit = policy.max_line_length or sys.maxsize
        for name, value in msg.raw_items():
            if (
                isinstance(value, str)
                and len(name) + 2 + len(value) <= limit
                and _PLAIN_HEADER.fullmatch(value)
            ):
                self._fp.write(f"{name}: {value}{policy.linesep}".encode("ascii"))
            else:
                self._fp.write(policy.fold_binary(name, value))
        self.write(self._NL)

    @classmethod
    def _make_boundary(cls, text: bytes | str | None = None) -> str:
        # The standard one's form and randomness; a boundary found anywhere in the text is
        # drawn again (the standard one looks only at whole lines, with a regex per message).
        while True:
            boundary = "=" * 15 + f"{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}" + "=="
            if text is None:
                return boundary
            if (boundary if isinstance(text, str) else boundary.encode("ascii")) not in text:
                return boundary


def message_bytes(mime: Message) -> bytes:
    """`mime.as_bytes(linesep="\r\n")` as Django's SMTP backend sends it, built faster."""
    out = BytesIO()
    _MessageGenerator(out, mangle_from_=False).flatten(mime, linesep="\r\n")
    return out.getvalue()


def stored_addressing() -> Addressing:
    """addressing_of(store.load()), read as one plain query of the four columns it needs:
    this runs for every message stored (each API request), and loading the whole settings
    record through the ORM cost more than the rest of the look-ups of a store."""
    from smtpsettings.models import SmtpSettings

    fields = ("sender_email", "sender_name", "reply_to", "bounce_address")
    quote = connection.ops.quote_name
    columns = ", ".join(quote(SmtpSettings._meta.get_field(f).column) for f in fields)
    table, key = quote(SmtpSettings._meta.db_table), quote(SmtpSettings._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {table} WHERE {key} = 1")
        row = cursor.fetchone()
    if row is None:  # the first use: store.load() creates the record with its defaults
        return addressing_of(store.load())
    return addressing_of(SmtpSettings(**dict(zip(fields, row, strict=True))))


def enqueue_delivery() -> None:
    """Wake a worker once the rows are committed. Never fails the caller: the mail is saved,
    and a caller told otherwise would send it again (see tasks.ring)."""
    from .tasks import ring

    ring()
