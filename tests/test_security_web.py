"""Sign-in throttling, security headers and secrets kept out of error reports, through the real
sign-in page (Django's test client, and real gunicorn processes for the client address)."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from django.core.management import call_command
from django.views.debug import SafeExceptionReporterFilter
from freezegun import freeze_time
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gatewaymgr import signin
from tests.conftest import make_user
from tests.workers import ROOT, database_url

LOGIN = "/login/"
ATTACKER = "203.0.113.66"
OWNER = "198.51.100.7"
LOCKED = "Too many failed sign-ins"


def sign_in(client, username: str, password: str, address: str):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def signed_in(response) -> bool:
    return response.status_code == 302 and response.url == "/"


def fail(client, username: str, times: int, address: str) -> None:
    for _ in range(times):
        response = sign_in(client, username, "wrong", address)
        assert response.status_code in (200, 429)


@pytest.fixture
def bob(db):
    return make_user("bob")


def test_forty_wrong_passwords_then_the_right_one_is_refused(client, bob):
    fail(client, "bob", 40, ATTACKER)

    response = sign_in(client, "bob", "pw", ATTACKER)

    assert not signed_in(response)
    assert response.status_code == 429
    page = response.content.decode()
    assert LOCKED in page and "Try again after" in page
    assert '<input type="password"' in page  # still the sign-in page, not a bare error
    assert "_auth_user_id" not in client.session


def test_the_lockout_message_says_when_to_try_again(client, bob):
    with freeze_time("2026-11-25 22:00:00"):
        fail(client, "bob", 5, ATTACKER)
        response = sign_in(client, "bob", "pw", ATTACKER)
    assert response.status_code == 429
    assert "Try again after 22:15 UTC" in response.content.decode()
    assert response["Retry-After"] == "900"


def test_fewer_failures_than_the_limit_still_sign_in(client, bob):
    fail(client, "bob", 4, ATTACKER)
    assert signed_in(sign_in(client, "bob", "pw", ATTACKER))


def test_the_account_owner_and_others_still_sign_in_from_their_own_addresses(client, bob):
    make_user("carol")
    fail(client, "bob", 40, ATTACKER)
    assert sign_in(client, "bob", "pw", ATTACKER).status_code == 429

    assert signed_in(sign_in(client, "carol", "pw", OWNER))
    client.logout()
    assert signed_in(sign_in(client, "bob", "pw", OWNER))


def test_an_address_that_guesses_across_many_accounts_is_locked(client, bob):
    for n in range(20):
        fail(client, f"user{n}", 1, ATTACKER)

    response = sign_in(client, "bob", "pw", ATTACKER)

    assert response.status_code == 429 and LOCKED in response.content.decode()
    assert signed_in(sign_in(client, "bob", "pw", OWNER))


def test_one_account_guessed_from_many_addresses_is_locked(client, bob):
    for n in range(50):
        fail(client, "bob", 1, f"192.0.2.{n + 1}")

    response = sign_in(client, "bob", "pw", "192.0.2.200")

    assert response.status_code == 429 and LOCKED in response.content.decode()


def test_after_the_cool_off_the_right_password_works(client, bob):
    start = datetime.datetime(2026, 11, 25, 22, 0, tzinfo=datetime.UTC)
    with freeze_time(start):
        fail(client, "bob", 40, ATTACKER)
    with freeze_time(start + datetime.timedelta(minutes=14)):
        assert sign_in(client, "bob", "pw", ATTACKER).status_code == 429
    with freeze_time(start + datetime.timedelta(minutes=16)):
        assert signed_in(sign_in(client, "bob", "pw", ATTACKER))


def test_an_administrator_can_lift_a_lockout_with_axes_reset(client, bob):
    fail(client, "bob", 5, ATTACKER)
    assert sign_in(client, "bob", "pw", ATTACKER).status_code == 429

    call_command("axes_reset", verbosity=0)

    assert signed_in(sign_in(client, "bob", "pw", ATTACKER))


# Real gunicorn, as scripts/run serves: two worker processes share the count through the
# database, and the address is the connection's peer (a second loopback address here).


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn(transactional_db, tmp_path):
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "gatewaymgr.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": database_url(),
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(10)
    log.close()


def post_login(port: int, source: str, username: str, password: str) -> int:
    """Sign in over a fresh connection from `source`, as a browser would (CSRF cookie and
    token from the page first); return the HTTP status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    conn.request("GET", LOGIN)
    response = conn.getresponse()
    page = response.read().decode()
    cookie = response.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = urlencode({"csrfmiddlewaretoken": token, "username": username, "password": password})
    conn.request(
        "POST",
        LOGIN,
        body,
        {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
    )
    status = conn.getresponse().status
    conn.close()
    return status


def test_behind_gunicorn_the_lockout_follows_the_real_client_address(gunicorn):
    make_user("bob")
    for _ in range(6):
        assert post_login(gunicorn, "127.0.0.2", "bob", "wrong") in (200, 429)

    assert post_login(gunicorn, "127.0.0.2", "bob", "pw") == 429
    assert post_login(gunicorn, "127.0.0.1", "bob", "pw") == 302


def test_a_forged_x_forwarded_for_does_not_give_an_attacker_fresh_addresses(client, bob):
    for n in range(6):
        client.post(
            LOGIN,
            {"username": "bob", "password": "wrong"},
            REMOTE_ADDR=ATTACKER,
            HTTP_X_FORWARDED_FOR=f"10.0.0.{n}",
        )
    response = client.post(
        LOGIN,
        {"username": "bob", "password": "pw"},
        REMOTE_ADDR=ATTACKER,
        HTTP_X_FORWARDED_FOR="10.0.0.99",
    )
    assert response.status_code == 429


@pytest.mark.parametrize(
    ("remote", "forwarded", "proxies", "expected"),
    [
        ("203.0.113.1", "", 0, "203.0.113.1"),
        ("203.0.113.1", "10.9.9.9", 0, "203.0.113.1"),  # no proxy: the header is the client's
        ("10.0.0.2", "198.51.100.7", 1, "198.51.100.7"),
        ("10.0.0.2", "6.6.6.6, 198.51.100.7", 1, "198.51.100.7"),  # forged entry on the left
        ("10.0.0.2", "198.51.100.7, 10.0.0.1", 2, "198.51.100.7"),
        ("10.0.0.2", "", 1, "10.0.0.2"),  # a proxy that did not say: its own address
    ],
)
def test_client_address(remote, forwarded, proxies, expected):
    assert signin.client_address(remote, forwarded, proxies) == expected


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([0, 0, 0], 0),
        ([4, 4, 4], 4),
        ([5, 5, 5], 5),
        ([1, 19, 19], 4),
        ([1, 20, 20], 5),
        ([0, 0, 50], 5),
        ([0, 0, 49], 4),
    ],
)
def test_each_rule_reaches_the_axes_limit_at_its_own_limit(counts, expected):
    assert signin.failures_toward_lockout(counts, [5, 20, 50], 5) == expected


def test_a_rule_lifts_when_the_row_that_reached_the_limit_expires():
    t = datetime.datetime(2026, 11, 25, 22, 0, tzinfo=datetime.UTC)
    minute = datetime.timedelta(minutes=1)
    cool_off = 15 * minute
    rows = [(3, t), (1, t + 2 * minute), (2, t + 5 * minute)]
    assert signin.rule_lifts_at(rows, 3, cool_off) == t + 2 * minute + cool_off
    assert signin.rule_lifts_at(rows, 6, cool_off) == t + cool_off
    assert signin.rule_lifts_at(rows, 7, cool_off) is None


def test_the_lockout_message_rounds_up_to_the_minute_it_lifts():
    until = datetime.datetime(2026, 11, 25, 22, 15, 1, tzinfo=datetime.UTC)
    assert "Try again after 22:16 UTC" in signin.lockout_message("from your address", until)


def test_a_crash_report_of_the_sign_in_page_would_not_contain_the_password(client, bob):
    response = sign_in(client, "bob", "hunter2-secret", OWNER)

    reported = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert reported["password"] == SafeExceptionReporterFilter.cleansed_substitute


# Headers


def test_every_response_carries_a_content_security_policy_without_inline_script(admin_client):
    for url in ["/login/", "/", "/settings/smtp/", "/admin/", "/no-such-page/"]:
        policy = admin_client.get(url)["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["script-src"] == "'self'", url
        assert directives["style-src"] == "'self'", url
        assert directives["frame-ancestors"] == "'self'", url
        assert directives["object-src"] == "'none'" and directives["base-uri"] == "'none'", url
        assert "unsafe" not in policy, url


# E-mails are not pages: mail clients need their inline styles, and no CSP applies to them.
EMAIL_TEMPLATES = {"invitations/email.html", "notifications/email"}
PAGE_TEMPLATES = [
    path
    for path in (ROOT / "templates").rglob("*.html")
    if not any(str(path.relative_to(ROOT / "templates")).startswith(e) for e in EMAIL_TEMPLATES)
]


@pytest.mark.parametrize("path", PAGE_TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_template_has_inline_script_or_style(path):
    text = path.read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", text), "inline <script>"
    assert "<style" not in text, "<style> element"
    assert not re.search(r"\sstyle\s*=", text), "style attribute"
    assert not re.search(r"\son[a-z]+\s*=", text), "event handler attribute"
    assert "javascript:" not in text


def response_headers_with(public_url: str) -> dict[str, str]:
    """The sign-in page's headers from the settings as they load with this PUBLIC_URL, in a
    fresh interpreter (settings are read once per process). The request is plain http, as a
    TLS-terminating proxy hands it to gunicorn."""
    host = urlsplit(public_url).hostname
    script = (
        "import django, json; django.setup(); from django.test import Client; "
        f"r = Client().get('/login/', HTTP_HOST={host!r}); "
        "print(json.dumps(dict(r.headers)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PUBLIC_URL": public_url},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hsts_is_sent_when_the_public_url_is_https():
    headers = response_headers_with("https://console.gatewaymgr.test")
    assert headers["Strict-Transport-Security"] == "max-age=31536000"


def test_no_hsts_when_the_public_url_is_http():
    headers = response_headers_with("http://console.gatewaymgr.test:8000")
    assert "Strict-Transport-Security" not in headers
    assert "Content-Security-Policy" in headers


# Dependencies: the runtime lock is exactly what the product needs; the test tools are apart.


def lock_names(path: Path) -> set[str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {
        canonicalize_name(line.split("==")[0])
        for line in lines
        if line and not line.startswith(("#", "-r"))
    }


def needed_by(requirements: list[str]) -> set[str]:
    """Every distribution the given requirements pull in, as installed here (markers and
    extras evaluated), themselves included."""
    found: set[str] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        for extra in requirement.extras or {""}:
            key = f"{name}[{extra}]"
            if key in found:
                continue
            found.add(key)
            for text in metadata.requires(name) or []:
                child = Requirement(text)
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    todo.append(child)
    return {key.split("[")[0] for key in found}


def test_the_runtime_lock_holds_what_the_product_needs_and_no_test_tool():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = needed_by(project["dependencies"])
    with_tests = needed_by(project["dependencies"] + project["optional-dependencies"]["test"])

    assert lock_names(ROOT / "requirements.lock") == runtime
    assert "-r requirements.lock" in (ROOT / "requirements-test.lock").read_text()
    assert lock_names(ROOT / "requirements-test.lock") == with_tests - runtime
    assert {"pytest", "playwright", "ruff", "aiosmtpd", "trustme"} <= with_tests - runtime
