"""The outbox table's database triggers, on SQLite and PostgreSQL.

1. A message's body (OutboundBody) is deleted by the very UPDATE that makes the message Sent,
   whatever path records it (the courier, hold_queue, plain SQL): a sent invitation's link then
   lives on only in the recipient's mailbox, and delivery costs no extra statement for it.

2. Exact outbox counts by status that cost the same at a million messages as at ten: a small
table (OutboundStatusCount) that database triggers keep, on every INSERT, DELETE and change of
status of an outbox row, whatever the writer (the ORM, a bulk delete, plain SQL).

Each status has up to 8 rows (shards), summed when read (a shard's own figure means nothing
and may be negative on PostgreSQL), so concurrent writers seldom wait for the same row.

SQLite (writers are serialised anyway): row triggers, shard = id % 8. A decrement only changes
an existing row: a table emptied by a test's flush (either table first) stays consistent.

PostgreSQL: shard = the writer's backend (pg_backend_pid() % 8), so one transaction touches
one row per status, whatever rows it writes. INSERT and DELETE: statement triggers over the
transition tables (a bulk insert or a purge adds one statement, not one per row). A status
change: a row trigger that fires only when the status changes (UPDATE OF status ... WHEN), so
the courier's lease renewals and checks cost nothing. Locks are taken in status order within a
statement. A flush (TRUNCATE of every table) empties both tables at once.

SQLite drops a table's triggers when a migration rebuilds the table (many AlterField and
RemoveField operations do): after every `migrate`, ensure_triggers() puts them back and
recounts (see apps.py).
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

OUTBOX = "notifications_outboundemail"
COUNTS = "notifications_outboundstatuscount"
BODIES = "notifications_outboundbody"
SHARDS = 8

SQLITE = [
    f"""CREATE TRIGGER outbox_count_insert AFTER INSERT ON {OUTBOX}
BEGIN
  INSERT INTO {COUNTS} (status, shard, n) VALUES (NEW.status, NEW.id % {SHARDS}, 1)
    ON CONFLICT (status, shard) DO UPDATE SET n = n + 1;
END""",
    f"""CREATE TRIGGER outbox_count_update AFTER UPDATE OF status ON {OUTBOX}
WHEN OLD.status <> NEW.status
BEGIN
  UPDATE {COUNTS} SET n = n - 1 WHERE status = OLD.status AND shard = OLD.id % {SHARDS};
  INSERT INTO {COUNTS} (status, shard, n) VALUES (NEW.status, NEW.id % {SHARDS}, 1)
    ON CONFLICT (status, shard) DO UPDATE SET n = n + 1;
END""",
    f"""CREATE TRIGGER outbox_count_delete AFTER DELETE ON {OUTBOX}
BEGIN
  UPDATE {COUNTS} SET n = n - 1 WHERE status = OLD.status AND shard = OLD.id % {SHARDS};
END""",
]
SQLITE += [
    f"""CREATE TRIGGER outbox_drop_body AFTER UPDATE OF status ON {OUTBOX}
WHEN NEW.status = 'sent' AND OLD.status <> 'sent'
BEGIN
  DELETE FROM {BODIES} WHERE email_id = NEW.id;
END""",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS outbox_drop_body",
    "DROP TRIGGER IF EXISTS outbox_count_insert",
    "DROP TRIGGER IF EXISTS outbox_count_update",
    "DROP TRIGGER IF EXISTS outbox_count_delete",
]
POSTGRESQL_FUNCTIONS = {
    "outbox_drop_body": "outbox_drop_body",
    "outbox_count_insert": "outbox_count_rows",
    "outbox_count_update": "outbox_count_change",
    "outbox_count_delete": "outbox_count_rows",
}
TRIGGERS = ("outbox_drop_body", "outbox_count_insert", "outbox_count_update", "outbox_count_delete")

# PostgreSQL: a writer's changes go to the shard of its backend (connection), so a transaction
# touches one row per status, and two transactions wait for each other only when their
# backends share a shard. Locks are taken in status order, within a statement.
_SHARD = f"pg_backend_pid() % {SHARDS}"
_ADD_ROWS = f"""INSERT INTO {COUNTS} (status, shard, n)
      SELECT status, {_SHARD}, DELTA FROM ROWS GROUP BY status ORDER BY status
      ON CONFLICT (status, shard) DO UPDATE SET n = {COUNTS}.n + EXCLUDED.n"""
POSTGRESQL = [
    # INSERT and DELETE: once per statement, over its rows (a bulk insert or a purge).
    f"""CREATE OR REPLACE FUNCTION outbox_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    {_ADD_ROWS.replace("DELTA", "count(*)").replace("ROWS", "new_rows")};
  ELSE
    {_ADD_ROWS.replace("DELTA", "-count(*)").replace("ROWS", "old_rows")};
  END IF;
  RETURN NULL;
END
$$""",
    # A change of status: per row, and only when the status changes, so the many UPDATEs
    # that change no status (a lease renewed, the check before each send) cost nothing.
    f"""CREATE OR REPLACE FUNCTION outbox_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO {COUNTS} (status, shard, n)
    SELECT status, {_SHARD}, d FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS v(status, d)
    ORDER BY status
    ON CONFLICT (status, shard) DO UPDATE SET n = {COUNTS}.n + EXCLUDED.n;
  RETURN NULL;
END
$$""",
    f"""CREATE OR REPLACE FUNCTION outbox_drop_body() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM {BODIES} WHERE email_id = NEW.id;
  RETURN NULL;
END
$$""",
    f"""CREATE TRIGGER outbox_drop_body AFTER UPDATE OF status ON {OUTBOX} FOR EACH ROW
WHEN (NEW.status = 'sent' AND OLD.status <> 'sent') EXECUTE FUNCTION outbox_drop_body()""",
    f"""CREATE TRIGGER outbox_count_insert AFTER INSERT ON {OUTBOX}
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_rows()""",
    f"""CREATE TRIGGER outbox_count_update AFTER UPDATE OF status ON {OUTBOX} FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION outbox_count_change()""",
    f"""CREATE TRIGGER outbox_count_delete AFTER DELETE ON {OUTBOX}
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_rows()""",
]
POSTGRESQL_DROP = [
    f"DROP TRIGGER IF EXISTS outbox_drop_body ON {OUTBOX}",
    "DROP FUNCTION IF EXISTS outbox_drop_body()",
    f"DROP TRIGGER IF EXISTS outbox_count_insert ON {OUTBOX}",
    f"DROP TRIGGER IF EXISTS outbox_count_update ON {OUTBOX}",
    f"DROP TRIGGER IF EXISTS outbox_count_delete ON {OUTBOX}",
    "DROP FUNCTION IF EXISTS outbox_count_rows()",
    "DROP FUNCTION IF EXISTS outbox_count_change()",
]
COUNT_EXISTING = f"""INSERT INTO {COUNTS} (status, shard, n)
SELECT status, id % {SHARDS}, count(*) FROM {OUTBOX} GROUP BY status, id % {SHARDS}"""


DROP_SENT_BODIES = f"""DELETE FROM {BODIES}
WHERE email_id IN (SELECT id FROM {OUTBOX} WHERE status = 'sent')"""


def install(connection: BaseDatabaseWrapper) -> None:
    """(Re)create the triggers, count the existing rows and drop the bodies of sent mail, in
    one transaction: a row stored meanwhile is counted once, by the count or by a trigger."""
    from django.db import transaction

    vendor = connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        raise NotImplementedError(f"outbox counts need triggers for {vendor}")
    postgresql = vendor == "postgresql"
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        for statement in POSTGRESQL_DROP if postgresql else SQLITE_DROP:
            cursor.execute(statement)
        for statement in POSTGRESQL if postgresql else SQLITE:
            cursor.execute(statement)
        if postgresql:  # other writers wait until the count below commits
            cursor.execute(f"LOCK TABLE {OUTBOX} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(f"DELETE FROM {COUNTS}")
        cursor.execute(COUNT_EXISTING)
        cursor.execute(DROP_SENT_BODIES)


def present(connection: BaseDatabaseWrapper) -> bool:
    """Whether all the triggers are on the outbox table."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # By trigger and function, so that triggers of an earlier definition are replaced.
            cursor.execute(
                "SELECT count(*) FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid"
                " WHERE t.tgrelid = %s::regclass AND t.tgname || ':' || p.proname = ANY(%s)",
                [OUTBOX, [f"{name}:{function}" for name, function in POSTGRESQL_FUNCTIONS.items()]],
            )
        else:
            cursor.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s"
                " AND name IN (%s, %s, %s, %s)",
                [OUTBOX, *TRIGGERS],
            )
        return cursor.fetchone()[0] == len(TRIGGERS)


def ensure_triggers(using: str = "default", **kwargs) -> None:
    """post_migrate: put the triggers back (and recount) if a migration dropped them."""
    from django.db import connections

    connection = connections[using]
    tables = connection.introspection.table_names()
    if OUTBOX in tables and COUNTS in tables and not present(connection):
        install(connection)
