"""The password is stored encrypted: not even the raw database file holds it in clear."""

import subprocess
from pathlib import Path

import pytest
from django.db import connection

from smtpsettings import store

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


def test_sqlite_file_does_not_contain_the_password(admin_client):
    if connection.vendor != "sqlite":
        pytest.skip("reads the SQLite database file; PostgreSQL is checked through SQL below")
    response = admin_client.post(
        "/settings/smtp/",
        FORM,
    )
    assert response.status_code == 302
    token = store.load().password_token
    connection.close()  # flush the connection so every byte is in the files
    database = Path(connection.settings_dict["NAME"])
    # Read the files from another process: closing a descriptor of the database file in this
    # one would drop the POSIX locks SQLite holds here (a documented SQLite pitfall) and
    # corrupt later tests that share the file with worker processes.
    files = [str(path) for path in (database, Path(f"{database}-wal")) if path.exists()]
    raw = subprocess.run(["cat", *files], capture_output=True, check=True).stdout
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
