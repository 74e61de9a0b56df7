"""Issue 10, hole 6: secrets at rest and in logs, tried on a fresh install with the real
manage.py and a real gunicorn: the data directory is owner-only, the first administrator's
password stays out of the log stream, and invitation tokens stay out of the server's logs."""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import pty
import re
import secrets
import socket
import sqlite3
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewaymgr.logredaction import redact
from tests.smtpservers import free_port
from tests.workers import wait_until

ROOT = Path(__file__).resolve().parents[1]
LOGGER_CLASS = "gatewaymgr.gunicorn_logging.RedactingLogger"


def install_env(data: Path) -> dict[str, str]:
    """The environment of a fresh install whose data lives in `data` (not the test run's)."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"SECRET_KEY", "SECRET_KEY_FALLBACKS", "SMTP_ENCRYPTION_KEYS"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="gatewaymgr.settings",
        GATEWAYMGR_DATA_DIR=str(data),
        DATABASE_URL=f"sqlite:///{data / 'db.sqlite3'}",
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def installed(tmp_path) -> tuple[dict[str, str], Path]:
    """A migrated fresh install with its static files, as scripts/run prepares it."""
    data = tmp_path / "var"
    env = install_env(data)
    manage(env, "migrate", "--no-input")
    manage(env, "createcachetable")
    manage(env, "collectstatic", "--no-input", "--verbosity", "0")
    return env, data


@contextlib.contextmanager
def gunicorn(env: dict[str, str], logs: Path) -> Iterator[str]:
    """gunicorn serving the install on a free loopback port, with the access log in
    logs/access.log and everything else the server prints in logs/server.log."""
    port = free_port()
    with open(logs / "server.log", "w") as server_log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "gatewaymgr.wsgi",
                "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--access-logfile", str(logs / "access.log"), "--logger-class", LOGGER_CLASS,
            ],
            cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def listening() -> bool:
        assert process.poll() is None, (logs / "server.log").read_text()
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, what="gunicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def fetch(opener, url: str, data: dict | None = None, **headers: str):
    """(status, headers, body) of one request; a redirect or error status is returned too."""
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def browser():
    cookies = urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    return urllib.request.build_opener(cookies, _NoRedirect)


def sign_in(base: str, username: str, password: str) -> int:
    """The status of a sign-in through the real login page: 302 when it worked."""
    opener = browser()
    _status, _headers, page = fetch(opener, f"{base}/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    status, _headers, _page = fetch(
        opener,
        f"{base}/login/",
        {"csrfmiddlewaretoken": csrf, "username": username, "password": password},
    )
    return status


# --- 6a. The data directory, the database and the secret key are owner-only ---------------------


def test_a_fresh_install_is_owner_only_and_an_older_one_is_tightened_on_start(tmp_path):
    data = tmp_path / "var"
    env = install_env(data)
    manage(env, "migrate", "--no-input")
    database, secret_key = data / "db.sqlite3", data / "secret_key"
    assert mode(data) == 0o700
    assert mode(database) == 0o600 and mode(secret_key) == 0o600
    wal, shm = Path(f"{database}-wal"), Path(f"{database}-shm")
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE probe (x)")  # SQLite makes -wal and -shm as it writes
        assert mode(wal) == 0o600 and mode(shm) == 0o600

        # As an earlier version left them: readable by every local user.
        data.chmod(0o755)
        for path in (database, secret_key, wal, shm):
            path.chmod(0o644)
        started = manage(env, "migrate", "--no-input")
        assert mode(data) == 0o700
        for path in (database, secret_key, wal, shm):
            assert mode(path) == 0o600, path
    log = started.stderr
    assert "Tightened to owner-only access" in log
    assert f"{data} (was 0755)" in log
    for path in (database, secret_key, wal, shm):
        assert f"{path} (was 0644)" in log
    again = manage(env, "migrate", "--no-input")
    assert "Tightened" not in again.stderr  # said once, when there was something to do


# --- 6d. The first administrator's password stays out of the server's log stream ----------------


def test_the_first_password_goes_to_an_owner_only_file_when_output_is_not_a_terminal(
    installed, tmp_path
):
    env, data = installed
    # stdout is a pipe here, as when scripts/run runs under systemd or into a log file.
    created = manage(env, "ensure_admin", "--url", "http://127.0.0.1:8000/")
    saved = data / "first-admin-password"
    password = saved.read_text().strip()
    assert len(password) >= 16
    assert mode(saved) == 0o600
    assert password not in created.stdout + created.stderr
    assert str(saved) in created.stdout and f"rm {saved}" in created.stdout
    with gunicorn(env, tmp_path) as base:
        assert sign_in(base, "admin", password) == 302
        assert sign_in(base, "admin", password + "x") == 200
    later = manage(env, "ensure_admin")  # scripts/run again: reminds, never repeats it
    assert password not in later.stdout and f"rm {saved}" in later.stdout


def test_on_a_terminal_the_first_password_is_shown_there_and_no_file_is_written(installed):
    env, data = installed
    primary, secondary = pty.openpty()
    with open(os.devnull) as nothing:
        process = subprocess.run(
            [sys.executable, "manage.py", "ensure_admin"],
            cwd=ROOT, env=env, stdin=nothing, stdout=secondary, stderr=subprocess.PIPE,
            timeout=180, check=False,
        )  # fmt: skip
    os.close(secondary)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once everything written has been read
        while chunk := os.read(primary, 4096):
            shown += chunk
    os.close(primary)
    assert process.returncode == 0, process.stderr
    assert re.search(rb"password: +\S{16,}", shown), shown
    assert not (data / "first-admin-password").exists()


# --- 6c. Invitation tokens stay out of the server's logs ----------------------------------------


def test_invitation_tokens_stay_out_of_the_access_log_and_the_server_log(installed, tmp_path):
    assert f"--logger-class {LOGGER_CLASS}" in (ROOT / "scripts" / "run").read_text()
    env, _data = installed
    token, referred, unknown = (secrets.token_urlsafe(32) for _ in range(3))
    manage(
        env, "shell", "-c",
        "import datetime; from django.utils import timezone; "
        "from gatewaymgr.models import Invitation; from gatewaymgr.invitations import hash_token; "
        f"Invitation.objects.create(email='bob@example.com', token_hash=hash_token('{token}'), "
        "expires_at=timezone.now() + datetime.timedelta(days=1))",
    )  # fmt: skip
    with gunicorn(env, tmp_path) as base:
        opener = browser()
        status, headers, _page = fetch(
            opener, f"{base}/invite/{token}/", Referer=f"{base}/invite/{referred}/?x=1"
        )
        assert status == 302 and headers["Referrer-Policy"] == "no-referrer"
        status, _headers, page = fetch(opener, base + headers["Location"])
        assert status == 200 and "Join Gateway Manager" in page
        status, headers, _page = fetch(opener, f"{base}/invite/{unknown}/")
        assert status == 410 and headers["Referrer-Policy"] == "no-referrer"
    access = (tmp_path / "access.log").read_text()
    server = (tmp_path / "server.log").read_text()
    assert '"GET /invite/[redacted]/ HTTP/1.1" 302' in access
    assert f'"{base}/invite/[redacted]/?x=1"' in access  # the Referer, redacted alike
    assert '"GET /invite/[redacted]/ HTTP/1.1" 410' in access
    assert "Gone: /invite/[redacted]/" in server  # Django's warning about the 410
    for secret in (token, referred, unknown):
        assert secret not in access and secret not in server


@pytest.mark.parametrize(
    ("logged", "redacted"),
    [
        ("GET /invite/abc_DEF-123/ HTTP/1.1", "GET /invite/[redacted]/ HTTP/1.1"),
        ("GET /invite/abc_DEF-123 HTTP/1.1", "GET /invite/[redacted] HTTP/1.1"),
        ("/login/?next=%2Finvite%2Fabc_DEF-123%2F", "/login/?next=%2Finvite%2F[redacted]%2F"),
        ("https://x.example/invite/abc?y=1", "https://x.example/invite/[redacted]?y=1"),
        ("GET /invite/join/42/ HTTP/1.1", "GET /invite/join/42/ HTTP/1.1"),
        ("GET /invite/joined/ HTTP/1.1", "GET /invite/[redacted]/ HTTP/1.1"),
        ("GET /users/ HTTP/1.1", "GET /users/ HTTP/1.1"),
    ],
)
def test_redact_takes_the_token_out_of_any_logged_text(logged, redacted):
    assert redact(logged) == redacted
