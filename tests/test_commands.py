"""`smtp_settings show|set`, `rotate_smtp_key` and `ensure_admin` on the command line."""

import io
import json

import pytest
import trustme
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from smtpsettings import keyring, store
from smtpsettings.models import PasswordState, SmtpSettings, SmtpSettingsChange

pytestmark = pytest.mark.django_db


def run(*args, stdin: str | None = None, monkeypatch=None) -> str:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    out = io.StringIO()
    call_command("smtp_settings", *args, stdout=out)
    return out.getvalue()


def configure(monkeypatch, *extra: str, password: str = "s3cret-pw") -> str:
    return run(
        "set",
        "--sender=gateway@example.com",
        "--host=smtp.example.com",
        "--user=alice",
        "--password-stdin",
        *extra,
        stdin=password + "\n",
        monkeypatch=monkeypatch,
    )


def test_set_saves_only_the_given_fields_and_prints_the_plan(monkeypatch):
    output = configure(monkeypatch)
    assert "Server: (blank) -> smtp.example.com" in output
    assert "Password: not set -> set" in output
    assert "Connects to smtp.example.com:587, upgrades with STARTTLS (required)" in output
    assert "s3cret-pw" not in output
    output = run("set", "--sender-name=Gateway")
    saved = store.load()
    assert (saved.sender_name, saved.host, saved.username) == (
        "Gateway",
        "smtp.example.com",
        "alice",
    )
    assert saved.reveal_password() == "s3cret-pw"
    assert output.splitlines()[0] == "Sender name: (blank) -> Gateway"
    entry = SmtpSettingsChange.objects.first()
    assert entry.source == "command line" and entry.actor.endswith("(command line)")


def test_show_prints_password_only_as_its_state(monkeypatch):
    configure(monkeypatch, "--options", '{"verify_peer": "false"}')
    text = run("show")
    assert "s3cret-pw" not in text
    assert "Password:     set" in text
    assert "does not verify the server certificate (verify_peer is off)" in text
    report = json.loads(run("show", "--json"))
    assert "s3cret-pw" not in json.dumps(report)
    assert report["password"] == "set"
    assert report["host"] == "smtp.example.com"
    assert report["options"] == {"verify_peer": "false"}
    assert report["plan"]["security"] == "starttls"
    assert report["plan"]["verify_peer"] is False
    assert report["plan"]["description"].startswith("Connects to smtp.example.com:587")


def test_show_on_a_fresh_install():
    text = run("show")
    assert "Port:         587" in text
    assert "No SMTP server is configured yet" in text
    assert json.loads(run("show", "--json"))["plan"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port=abc"], "--port: Enter a port from 1 to 65535"),
        (["--port=0"], "--port: Enter a port from 1 to 65535"),
        (["--port=70000"], "--port: Enter a port from 1 to 65535"),
        (["--host=smtp example.com"], "--host: The server name cannot contain spaces"),
        (["--sender=nope"], "--sender: Enter a complete e-mail address"),
        (["--options=[]"], "--options: The options must be a JSON object"),
        (['--options={"verfy_peer":false}'], 'Did you mean "verify_peer"?'),
        (['--options={"verify_peer":"maybe"}'], "verify_peer must be true or false"),
    ],
)
def test_invalid_input_exits_non_zero_and_saves_nothing(monkeypatch, args, message):
    configure(monkeypatch)
    before = SmtpSettings.objects.values().get()
    with pytest.raises(CommandError) as caught:
        run("set", "--sender-name=Changed", *args)
    assert "Nothing was saved." in str(caught.value)
    assert message in str(caught.value)
    assert SmtpSettings.objects.values().get() == before


def test_first_set_without_a_host_names_what_is_missing():
    with pytest.raises(CommandError, match="--host: Enter the SMTP server's host name"):
        run("set", "--sender=gateway@example.com")


def test_changing_host_drops_the_password_and_says_so(monkeypatch):
    configure(monkeypatch)
    output = run("set", "--host=smtp2.example.com")
    assert "The stored password was removed" in output
    assert store.load().password_state is PasswordState.NOT_SET


def test_clear_password(monkeypatch):
    configure(monkeypatch)
    assert "Password: set -> removed" in run("set", "--clear-password")
    assert store.load().password_state is PasswordState.NOT_SET


def test_empty_password_on_stdin_is_refused(monkeypatch):
    configure(monkeypatch)
    with pytest.raises(CommandError, match="No password on standard input"):
        run("set", "--password-stdin", stdin="\n", monkeypatch=monkeypatch)
    assert store.load().reveal_password() == "s3cret-pw"


def test_trusted_certificate_from_a_file(monkeypatch, tmp_path):
    configure(monkeypatch)
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    run("set", f"--trusted-certificate={path}")
    assert store.load().trusted_certificate.startswith("-----BEGIN CERTIFICATE-----")
    assert "Trusted cert: OU=Testing CA" in run("show")
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(CommandError, match="--trusted-certificate: This is not a PEM"):
        run("set", f"--trusted-certificate={tmp_path / 'bad.pem'}")
    with pytest.raises(CommandError, match="Cannot read the certificate file"):
        run("set", f"--trusted-certificate={tmp_path / 'missing.pem'}")
    run("set", "--trusted-certificate=")
    assert store.load().trusted_certificate == ""


def test_unreadable_password_is_reported_by_show(monkeypatch, settings):
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    configure(monkeypatch)
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    text = run("show")
    assert "Password:     unreadable" in text
    assert "cannot be decrypted with the current keys" in text


def test_rotate_smtp_key_moves_the_password_to_the_newest_key(monkeypatch, settings):
    old = keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [old]
    configure(monkeypatch)
    new = keyring.generate_key()
    settings.SMTP_ENCRYPTION_KEYS = [new, old]
    out = io.StringIO()
    call_command("rotate_smtp_key", stdout=out)
    assert "now encrypted under the newest key" in out.getvalue()
    assert "s3cret-pw" not in out.getvalue()
    settings.SMTP_ENCRYPTION_KEYS = [new]
    settings.SECRET_KEY_FALLBACKS = []
    assert store.load().reveal_password() == "s3cret-pw"


def test_rotate_smtp_key_without_a_readable_password(monkeypatch, settings):
    out = io.StringIO()
    call_command("rotate_smtp_key", stdout=out)
    assert "No SMTP password is stored" in out.getvalue()
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    configure(monkeypatch)
    settings.SMTP_ENCRYPTION_KEYS = [keyring.generate_key()]
    with pytest.raises(CommandError, match=r"cannot be decrypted.*--password-stdin"):
        call_command("rotate_smtp_key")


def test_rotate_smtp_key_generates_a_usable_key(settings):
    out = io.StringIO()
    call_command("rotate_smtp_key", "--generate", stdout=out)
    settings.SMTP_ENCRYPTION_KEYS = [out.getvalue().strip()]
    assert keyring.decrypt(keyring.encrypt("x")) == "x"


def test_ensure_admin_creates_one_administrator_once(settings):
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    text = out.getvalue()
    # Not a terminal: the password goes to an owner-only file (tests/test_security_files.py).
    saved = settings.DATA_DIR / "first-admin-password"
    password = saved.read_text().strip()
    saved.unlink()
    assert "user:     admin" in text and password not in text
    assert User.objects.get(username="admin").check_password(password)
    again = io.StringIO()
    call_command("ensure_admin", stdout=again)
    assert "password:" not in again.getvalue()
    assert User.objects.filter(is_superuser=True).count() == 1
