"""Secrets at rest: not even the raw database file holds the SMTP password or a usable
invitation link."""

import re
import subprocess
from pathlib import Path

import pytest
from django.db import connection

from notifications.delivery import Courier
from notifications.models import OutboundBody, OutboundEmail, Status
from smtpsettings import store
from tests.outbox import point_settings_at
from tests.smtpservers import smtp_server
from tests.workers import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "Plaintext-Canary-7f3a9c"
FORM = {
    "sender_email": "gateway@example.com",
    "host": "smtp.example.com",
    "port": "587",
    "encryption": "auto",
    "username": "alice",
    "password": PASSWORD,
}
LINK = re.compile(rb"https://console\.example\.com/invite/([A-Za-z0-9_-]+)/")


def raw_sqlite_files() -> bytes:
    """The database file and its write-ahead log, as another local user would copy them."""
    connection.close()  # flush the connection so every byte is in the files
    database = Path(connection.settings_dict["NAME"])
    # Read the files from another process: closing a descriptor of the database file in this
    # one would drop the POSIX locks SQLite holds here (a documented SQLite pitfall) and
    # corrupt later tests that share the file with worker processes.
    files = [str(path) for path in (database, Path(f"{database}-wal")) if path.exists()]
    # A worker still running may checkpoint and remove the write-ahead log meanwhile.
    read = 'for file; do cat "$file" 2>/dev/null || [ ! -e "$file" ] || exit 1; done'
    return subprocess.run(["sh", "-c", read, "_", *files], capture_output=True, check=True).stdout


def every_value_in_the_database() -> bytes:
    """Every column of every row of every table, as bytes, through SQL (any database)."""
    values = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            for row in cursor.fetchall():
                for value in row:
                    is_binary = isinstance(value, bytes | memoryview)
                    values.append(bytes(value) if is_binary else str(value).encode())
    return b"\n".join(values)


def raw_outbox_files() -> bytes:
    """What a copy of the files under the database holds for the outbox table, with every
    change written out: SQLite's file, or PostgreSQL's table and TOAST files."""
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return raw_sqlite_files()
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")
        cursor.execute("SHOW data_directory")
        (directory,) = cursor.fetchone()
        cursor.execute(
            "SELECT pg_relation_filepath(oid), pg_relation_filepath(reltoastrelid) "
            "FROM pg_class WHERE oid = 'notifications_outboundemail'::regclass"
        )
        paths = [f"{directory}/{path}" for path in cursor.fetchone() if path]
    return subprocess.run(["cat", *paths], capture_output=True, check=True).stdout


def contains_token(raw: bytes, token: bytes) -> bool:
    """Whether `raw` holds the token, even where a quoted-printable line break splits it: one
    of its halves is then still whole."""
    half = len(token) // 2
    return token[:half] in raw or token[half:] in raw


def invite_bob(client) -> None:
    response = client.post("/users/", {"addresses": "bob@example.com", "valid_days": "7"})
    assert response.status_code == 302


def link_token(server) -> bytes:
    (received,) = server.messages
    return LINK.search(received.data.replace(b"=\r\n", b"")).group(1)


def test_sqlite_file_does_not_contain_the_password(admin_client):
    if connection.vendor != "sqlite":
        pytest.skip("reads the SQLite database file; PostgreSQL is checked through SQL below")
    response = admin_client.post(
        "/settings/smtp/",
        FORM,
    )
    assert response.status_code == 302
    token = store.load().password_token
    raw = raw_sqlite_files()
    assert token.encode() in raw, "the test must find the stored record in the file"
    assert PASSWORD.encode() not in raw
    assert PASSWORD.encode("utf-16-le") not in raw


def test_no_column_of_any_table_holds_the_password(admin_client):
    admin_client.post(
        "/settings/smtp/",
        FORM,
    )
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT * FROM {quoted}")
            found += [table for row in cursor.fetchall() if PASSWORD in repr(row)]
    assert store.load().reveal_password() == PASSWORD
    assert found == []


def test_sqlite_file_never_holds_a_usable_invitation_link(admin_client, client, workers, settings):
    """A copy of the database file, taken while the invitation waits in the outbox or after a
    real worker delivered it, yields no link; the e-mail the server received does."""
    if connection.vendor != "sqlite":
        pytest.skip("reads the SQLite database file; PostgreSQL is checked through SQL below")
    settings.PUBLIC_URL = "https://console.example.com"
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        invite_bob(admin_client)
        queued = raw_sqlite_files()
        workers()
        wait_until(
            lambda: OutboundEmail.objects.filter(status=Status.SENT).exists(), what="delivery"
        )
    delivered = raw_sqlite_files()
    token = link_token(server)
    assert b"bob@example.com" in queued, "the test must find the queued message in the file"
    assert not contains_token(queued, token)
    assert not contains_token(delivered, token)
    (email,) = OutboundEmail.objects.all()
    assert not email.has_body  # dropped once the server said 250
    assert not OutboundBody.objects.exists()
    assert email.recipients[0]["status"] == "sent"
    accept = client.get(f"/invite/{token.decode()}/", follow=True)  # the e-mail's link works
    assert accept.status_code == 200 and "bob@example.com" in accept.content.decode()


def test_no_column_of_any_table_holds_an_invitation_link(admin_client, settings):
    """The same through SQL and the table's files, so it holds on PostgreSQL too."""
    settings.PUBLIC_URL = "https://console.example.com"
    with smtp_server() as server:
        point_settings_at(server.host, server.port)
        invite_bob(admin_client)
        queued = every_value_in_the_database()
        files = raw_outbox_files()
        Courier().drain()
    token = link_token(server)
    assert b"bob@example.com" in queued, "the test must find the queued message"
    assert b"bob@example.com" in files, "the test must find the queued message in the files"
    assert not contains_token(queued, token)
    assert not contains_token(files, token)
    assert not contains_token(every_value_in_the_database(), token)
