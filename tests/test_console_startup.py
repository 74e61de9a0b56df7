"""Start-up and small console defects of issue 13: /favicon.ico, the printed changepassword
command that must work from any directory without the venv activated, and BIND without
PUBLIC_URL (links in e-mails followed the default port 8000 without a word)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gatewaymgr.public_url import public_url

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.django_db
def test_favicon_ico_is_an_icon_not_a_404(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    body = b"".join(response) if response.streaming else response.content
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file with its one image


def fresh_install(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh install whose data lives under tmp_path, with the shell's
    PATH stripped of any virtualenv (as an administrator's own shell would be)."""
    data = tmp_path / "var"
    env = {
        name: value
        for name, value in os.environ.items()
        if name
        not in {
            "SECRET_KEY",
            "SECRET_KEY_FALLBACKS",
            "SMTP_ENCRYPTION_KEYS",
            "VIRTUAL_ENV",
            "PUBLIC_URL",
            "BIND",
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        }
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
    )
    env.update(
        DJANGO_SETTINGS_MODULE="gatewaymgr.settings",
        GATEWAYMGR_DATA_DIR=str(data),
        DATABASE_URL=f"sqlite:///{data / 'db.sqlite3'}",
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_printed_changepassword_command_works_from_any_directory(tmp_path):
    env = fresh_install(tmp_path)
    manage(env, "migrate", "--no-input")
    printed = manage(env, "ensure_admin").stdout
    command = re.search(r"Change it with: (.+?), then remove", printed)
    assert command, printed
    again = manage(env, "ensure_admin").stdout  # the reminder on every later start
    assert command.group(1) in again, again

    # Run exactly what was printed, from another directory, with no virtualenv on PATH and no
    # terminal (getpass then reads the new password from stdin).
    new = "a-long-unusual-passphrase-4817"
    ran = subprocess.run(
        shlex.split(command.group(1)),
        cwd="/", env=env, input=f"{new}\n{new}\n", capture_output=True, text=True,
        timeout=180, check=False, start_new_session=True,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Password changed successfully for user 'admin'" in ran.stdout
    check = manage(
        env, "shell", "-c",
        "from django.contrib.auth.models import User; "
        f"print(User.objects.get(username='admin').check_password('{new}'))",
    )  # fmt: skip
    assert check.stdout.split()[-1] == "True"  # after the shell's note on its imports


@pytest.mark.parametrize(
    ("given", "bind", "expected", "warns"),
    [
        ("", "", "http://127.0.0.1:8000", False),
        ("https://gw.example.com/", "0.0.0.0:8080", "https://gw.example.com", False),
        ("", "10.0.0.5:8080", "http://10.0.0.5:8080", False),
        ("", "gateway.internal:9000", "http://gateway.internal:9000", False),
        ("", "[2001:db8::5]:8080", "http://[2001:db8::5]:8080", False),
        ("", "0.0.0.0:8080", "http://127.0.0.1:8080", True),
        ("", "[::]:8080", "http://127.0.0.1:8080", True),
        ("", "unix:/run/gatewaymgr.sock", "http://127.0.0.1:8000", True),
    ],
)
def test_public_url_follows_bind_or_warns(given, bind, expected, warns):
    url, warning = public_url(given, bind)
    assert url == expected
    if warns:
        assert "PUBLIC_URL" in warning and bind in warning and expected in warning
    else:
        assert warning == ""


def accept_link(env: dict[str, str]) -> str:
    return manage(
        env, "shell", "-c", "from gatewaymgr.invitations import accept_url; print(accept_url('t'))"
    ).stdout.split()[-1]  # after the shell's note on its automatic imports


def test_bind_without_public_url_gives_links_to_the_bound_address(tmp_path):
    env = fresh_install(tmp_path, BIND="127.0.0.5:8080")
    assert accept_link(env) == "http://127.0.0.5:8080/invite/t/"


def test_bind_to_every_address_without_public_url_warns_at_start(tmp_path):
    env = fresh_install(tmp_path, BIND="0.0.0.0:8080")
    manage(env, "migrate", "--no-input")
    started = manage(env, "ensure_admin")
    assert "PUBLIC_URL is not set" in started.stdout + started.stderr
    assert accept_link(env) == "http://127.0.0.1:8080/invite/t/"
