"""Issue 10, holes 2 and 4: where the stored SMTP password may go, and a password typed for a
test that Save must keep.

The attacker may edit the settings and can intercept traffic to the mail server: a fake server
listens on the real host and port. The stored password must never reach it after a change that
weakens how that server is verified, whether through "Send test e-mail", a save on the page or
the command line.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field

import pytest
from django.contrib.sessions.models import Session
from django.core.management import call_command
from freezegun import freeze_time

from smtpsettings import store
from smtpsettings.certificates import parse_pem_bundle
from smtpsettings.models import PasswordState, SmtpSettings, WrongServerPassword
from smtpsettings.tasks import run_smtp_test
from tests.settings_page import form_values, run_test, send_with_stored_settings
from tests.smtpservers import (
    PASSWORD,
    USERNAME,
    certificates,
    require_test_host,
    self_signed,
    smtp_server,
)

URL = "/settings/smtp/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def save(client, data: dict[str, str]) -> str:
    response = client.post(URL, {**data, "action": "save"}, follow=True)
    assert response.status_code == 200
    assert "form" not in response.context or not response.context["form"].errors
    return response.content.decode()


def values(server, **changes) -> dict[str, str]:
    return form_values(server, **{"username": USERNAME, **changes})


@dataclass
class Attack:
    """Saved settings that keep the password safe from the fake server, and the edit that
    would hand it over."""

    mode: str  # how the fake server on the real host:port speaks
    server_certs: object  # what it presents
    saved: dict[str, str] = field(default_factory=dict)
    edit: dict[str, str] = field(default_factory=dict)
    host: str | None = None  # the saved host, when not the test host name


def attacks() -> dict[str, Attack]:
    genuine, fake = self_signed(), self_signed()
    genuine_sha256 = parse_pem_bundle(genuine.pem)[0].sha256
    fake_sha256 = parse_pem_bundle(fake.pem)[0].sha256
    return {
        "verify_peer off": Attack(
            "starttls", fake, edit={"options": '{"timeout": 5, "verify_peer": false}'}
        ),
        "another trusted certificate": Attack(
            "starttls",
            fake,
            saved={"trusted_certificate": genuine.pem},
            edit={"trusted_certificate": fake.pem},
        ),
        "a new peer_fingerprint": Attack(
            "starttls",
            fake,
            saved={
                "options": json.dumps(
                    {"timeout": 5, "verify_peer": False, "peer_fingerprint": genuine_sha256}
                )
            },
            edit={
                "options": json.dumps(
                    {"timeout": 5, "verify_peer": False, "peer_fingerprint": fake_sha256}
                )
            },
        ),
        # SMTPS to this machine's own relay; switching to Automatic makes it plain SMTP, where
        # the password would cross in clear.
        "a change of encryption": Attack(
            "plain", None, saved={"encryption": "smtps"}, edit={"encryption": "auto"}
        ),
    }


@contextlib.contextmanager
def fake_server_with_saved_password(client, attack: Attack):
    with smtp_server(mode=attack.mode, certs=attack.server_certs, auth=True) as server:
        base = values(server, **attack.saved)
        if attack.mode == "plain":
            base["host"] = "127.0.0.1"  # only to loopback may a password go in clear
        save(client, {**base, "password": PASSWORD})
        assert store.load().password_state is PasswordState.SET
        yield server, base


@pytest.mark.parametrize("name", list(attacks()))
def test_send_test_email_with_weakened_values_never_sends_the_stored_password(admin_client, name):
    attack = attacks()[name]
    with fake_server_with_saved_password(admin_client, attack) as (server, base):
        html = run_test(admin_client, {**base, **attack.edit})
    assert server.recorder.logins == [], f"{name}: the fake server received the password"
    assert PASSWORD not in html
    assert "No password is stored for these values" in html


@pytest.mark.parametrize("name", list(attacks()))
def test_saving_weakened_values_on_the_page_drops_the_stored_password(admin_client, name):
    attack = attacks()[name]
    with fake_server_with_saved_password(admin_client, attack) as (server, base):
        page = save(admin_client, {**base, **attack.edit})
        problem = send_with_stored_settings()
    assert server.recorder.logins == [], f"{name}: the fake server received the password"
    assert "The stored password was removed" in page
    assert store.load().password_state is PasswordState.NOT_SET
    assert problem is not None and "No password is stored" in problem.advice


def cli_arguments(edit: dict[str, str], tmp_path) -> list[str]:
    arguments = []
    for name, value in edit.items():
        if name == "trusted_certificate":
            path = tmp_path / "certificate.pem"
            path.write_text(value)
            arguments += ["--trusted-certificate", str(path)]
        else:
            arguments += [f"--{name}", value]
    return arguments


@pytest.mark.parametrize("name", list(attacks()))
def test_saving_weakened_values_on_the_command_line_drops_the_stored_password(
    admin_client, name, tmp_path
):
    attack = attacks()[name]
    with fake_server_with_saved_password(admin_client, attack) as (server, _):
        out = io.StringIO()
        call_command("smtp_settings", "set", *cli_arguments(attack.edit, tmp_path), stdout=out)
        problem = send_with_stored_settings()
    assert server.recorder.logins == []
    assert "The stored password was removed" in out.getvalue()
    assert store.load().password_state is PasswordState.NOT_SET
    assert problem is not None


def test_changes_that_do_not_weaken_verification_keep_the_password(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        loose = values(
            server,
            trusted_certificate=certs.ca_pem,
            options='{"timeout": 5, "verify_peer": false}',
        )
        save(admin_client, {**loose, "password": PASSWORD})
        # Turning verification on, renaming the sender and a new timeout weaken nothing.
        page = save(
            admin_client,
            {**loose, "options": '{"timeout": 6}', "sender_name": "Gateway Manager"},
        )
        assert "The stored password was removed" not in page
        assert store.load().password_state is PasswordState.SET
        assert send_with_stored_settings() is None
    assert server.recorder.logins == [f"PLAIN {USERNAME}"]


def test_the_binding_is_unambiguous_for_ipv6_literals():
    # "host:port:user" reads the same for both of these.
    first = SmtpSettings(host="fe80::1", port=25, username="25:bob")
    second = SmtpSettings(host="fe80::1:25", port=25, username="bob")
    first.seal_password("secret")
    second.password_token = first.password_token
    with pytest.raises(WrongServerPassword):
        second.reveal_password()


# -- hole 4: a password typed for a passing test ---------------------------------------------


def session_texts() -> str:
    return " ".join(str(session.get_decoded()) for session in Session.objects.all())


def test_a_password_typed_for_a_passing_test_is_what_save_stores(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        form = values(server, trusted_certificate=certs.ca_pem)
        response = admin_client.post(URL, {**form, "password": PASSWORD, "action": "test"})
        assert PASSWORD not in response.content.decode()
        assert "kept, encrypted, for" in response.content.decode()
        run_smtp_test.call(response.context["test_run"].pk)
        assert PASSWORD not in session_texts()
        page = save(admin_client, form)  # the password field came back empty
        assert "The password you typed for the test was saved" in page
        assert store.load().password_state is PasswordState.SET
        assert send_with_stored_settings() is None
    assert server.recorder.logins == [f"PLAIN {USERNAME}"] * 2


def test_a_typed_password_is_not_saved_with_other_values(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        form = values(server, trusted_certificate=certs.ca_pem)
        admin_client.post(URL, {**form, "password": PASSWORD, "action": "test"})
        page = save(admin_client, {**form, "options": '{"timeout": 5, "verify_peer": false}'})
    assert "The password you typed for the test was saved" not in page
    assert store.load().password_state is PasswordState.NOT_SET


def test_a_typed_password_is_kept_only_for_a_few_minutes(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        form = values(server, trusted_certificate=certs.ca_pem)
        with freeze_time() as clock:
            admin_client.post(URL, {**form, "password": PASSWORD, "action": "test"})
            clock.tick(11 * 60)
            save(admin_client, form)
    assert store.load().password_state is PasswordState.NOT_SET


def test_a_user_without_a_stored_password_is_warned_and_not_blamed_on_credentials(
    admin_client,
):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        form = values(server, trusted_certificate=certs.ca_pem)
        page = save(admin_client, form)
        html = run_test(admin_client, form)
    assert "signs in as alice, but no password is stored" in page
    assert "A user name is set but no password is stored" in page
    assert "No password is stored for these values" in html
    assert "refused the user name or password" not in html
    assert server.recorder.logins == []


@pytest.mark.django_db(transaction=True)
def test_a_password_sealed_by_the_older_version_is_rebound_on_migration():
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from smtpsettings import keyring

    executor = MigrationExecutor(connection)
    executor.migrate([("smtpsettings", "0002_test_runs")])
    old_apps = executor.loader.project_state([("smtpsettings", "0002_test_runs")]).apps
    legacy = {"server": "smtp.example.com:587:alice", "password": "from-the-old-days"}
    old_apps.get_model("smtpsettings", "SmtpSettings").objects.create(
        pk=1,
        host="smtp.example.com",
        port=587,
        username="alice",
        password_token=keyring.encrypt(json.dumps(legacy)),
    )
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert store.load().reveal_password() == "from-the-old-days"
