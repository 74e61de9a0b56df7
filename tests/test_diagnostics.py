""" "Send test e-mail" on the page and on the command line, and the trust flow."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from smtpsettings import store
from smtpsettings.models import SmtpTestRun
from smtpsettings.tasks import run_smtp_test
from tests.settings_page import run_test
from tests.smtpservers import PASSWORD, USERNAME, certificates, require_test_host, smtp_server

URL = "/settings/smtp/"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def form(server, **changes):
    return {
        "sender_email": "gateway@example.com",
        "host": server.host,
        "port": str(server.port),
        "encryption": "auto",
        "username": "",
        "password": "",
        "options": '{"timeout": 5}',
        "trusted_certificate": "",
        "test_to": "admin@example.com",
        "action": "test",
        **changes,
    }


def test_test_email_uses_unsaved_form_values_and_shows_every_step(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        html = run_test(
            admin_client,
            form(server, username=USERNAME, password=PASSWORD, trusted_certificate=certs.ca_pem),
        )
    assert "Delivered: the server accepted the test e-mail for admin@example.com" in html
    for label in [
        "Resolve",
        "Connect",
        "Greeting",
        "EHLO",
        "STARTTLS",
        "AUTH",
        "MAIL FROM",
        "RCPT TO",
        "DATA",
        "QUIT",
    ]:
        assert f'<th scope="row">{label}</th>' in html, label
    assert "TLSv1.3" in html or "TLSv1.2" in html
    assert "PLAIN as alice" in html
    assert "STARTTLS" in html and "AUTH LOGIN PLAIN" in html  # the capabilities offered
    assert PASSWORD not in html
    assert store.load().host == ""  # testing saves nothing
    (received,) = server.messages
    assert received.rcpt_tos == ["admin@example.com"]
    assert received.message["Subject"] == "Gateway Manager test e-mail"


def test_stored_password_is_used_only_while_the_server_is_unchanged(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        values = form(
            server, username=USERNAME, password=PASSWORD, trusted_certificate=certs.ca_pem
        )
        admin_client.post(URL, {**values, "action": "save"})
        ok = run_test(admin_client, {**values, "password": ""})
        changed = run_test(admin_client, {**values, "password": "", "username": "mallory"})
    assert "Delivered" in ok
    assert "No password is stored for these values" in changed
    assert server.recorder.logins == [f"PLAIN {USERNAME}"]


def test_failure_shows_advice_and_the_servers_reply(admin_client):
    with smtp_server(mode="plain") as server:
        html = run_test(admin_client, form(server))
    assert "does not offer STARTTLS, which is required" in html
    assert '<tr class="failed">' in html


def test_trust_flow_shows_the_fingerprint_then_trusts_and_the_next_test_passes(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        admin_client.post(URL, {**form(server), "action": "save"})
        first = run_test(admin_client, form(server))
        assert "not signed by an authority this machine trusts" in first
        assert "Trust this certificate" in first
        confirm = admin_client.get("/settings/smtp/trust/").content.decode()
        from smtpsettings.certificates import parse_pem_bundle

        fingerprint = parse_pem_bundle(certs.pem)[0].sha256
        assert fingerprint in confirm
        response = admin_client.post("/settings/smtp/trust/", {"sha256": fingerprint})
        assert response.status_code == 302
        assert store.load().trusted_certificate.strip() == certs.pem.strip()
        assert store.load().options == {"timeout": 5}  # verify_peer untouched
        second = run_test(admin_client, form(server, trusted_certificate=certs.pem))
    assert "Delivered" in second
    assert len(server.messages) == 1


def test_trust_refuses_a_fingerprint_that_was_not_presented(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        run_test(admin_client, form(server))
    response = admin_client.post("/settings/smtp/trust/", {"sha256": "AB:CD"}, follow=True)
    assert "The certificate changed in the meantime" in response.content.decode()
    assert store.load().trusted_certificate == ""


def test_trust_page_needs_a_test_first(admin_client):
    response = admin_client.get("/settings/smtp/trust/", follow=True)
    assert "Send a test e-mail first" in response.content.decode()


def test_test_needs_the_change_permission(client):
    from tests.conftest import make_user

    client.force_login(make_user("viewer", "smtpsettings.view_smtpsettings"))
    assert client.post(URL, {"action": "test", "test_to": "a@example.com"}).status_code == 403
    assert client.get("/settings/smtp/trust/").status_code == 403


def configure_stored(server, **extra):
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port = server.host, server.port
    record.options = {"timeout": 5, **extra}
    record.save()
    return record


def test_command_test_delivers_and_exits_zero():
    with smtp_server() as server:
        configure_stored(server, auto_tls=False)
        out = io.StringIO()
        call_command("smtp_settings", "test", "--to", "ops@example.com", stdout=out)
    assert "Delivered: the server accepted it for ops@example.com" in out.getvalue()
    assert "MAIL FROM" in out.getvalue() and "QUIT" in out.getvalue()
    assert server.messages[0].rcpt_tos == ["ops@example.com"]


def test_command_test_json_and_non_zero_exit_on_failure():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs) as server:
        configure_stored(server)
        out = io.StringIO()
        with pytest.raises(CommandError) as caught:
            call_command("smtp_settings", "test", "--to", "ops@example.com", "--json", stdout=out)
    assert caught.value.returncode == 2
    report = json.loads(out.getvalue())
    assert report["delivered"] is False
    assert report["problem"]["kind"] == "untrusted"
    assert report["problem"]["certificate"]["names"] == ["smtp.gatewaymgr.test"]
    assert [step["name"] for step in report["steps"]][:4] == [
        "resolve",
        "connect",
        "greeting",
        "ehlo",
    ]


def test_command_test_validates_the_address():
    with pytest.raises(CommandError, match="--to: Enter a valid email address"):
        call_command("smtp_settings", "test", "--to", "not an address")


def test_command_transcript_never_contains_the_password():
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        record = configure_stored(server)
        record.username = USERNAME
        record.trusted_certificate = certs.ca_pem
        record.seal_password(PASSWORD)
        record.save()
        for extra in ([], ["--json"]):
            out = io.StringIO()
            call_command("smtp_settings", "test", "--to", "ops@example.com", *extra, stdout=out)
            assert "PLAIN as alice" in out.getvalue()
            assert PASSWORD not in out.getvalue()
    assert server.recorder.logins == [f"PLAIN {USERNAME}"] * 2


def test_the_request_only_stores_the_test_and_a_worker_runs_it(admin_client):
    with smtp_server(mode="plain") as server:
        response = admin_client.post(URL, form(server, options='{"auto_tls": false}'))
        assert server.recorder.connections == 0  # the web request did not talk to SMTP
        run = SmtpTestRun.objects.get()
        pending = admin_client.get(f"/settings/smtp/test/{run.pk}/").content.decode()
        assert 'http-equiv="refresh"' in pending and "Sending the test e-mail" in pending
        assert response.context["form"]["options"].value() == '{"auto_tls": false}'  # kept
        run_smtp_test.call(run.pk)
    done = admin_client.get(f"/settings/smtp/test/{run.pk}/").content.decode()
    assert "Delivered" in done and 'http-equiv="refresh"' not in done
    assert len(server.messages) == 1


def test_a_typed_password_is_not_kept_after_the_test(admin_client):
    certs = certificates()
    with smtp_server(mode="starttls", certs=certs, auth=True) as server:
        run_test(
            admin_client,
            form(server, username=USERNAME, password=PASSWORD, trusted_certificate=certs.ca_pem),
        )
    run = SmtpTestRun.objects.get()
    assert run.password_token == ""
    assert PASSWORD not in str(run.result)


def test_someone_elses_test_result_is_not_shown(admin_client, client):
    from tests.conftest import make_user

    with smtp_server(mode="plain") as server:
        admin_client.post(URL, form(server))
    run = SmtpTestRun.objects.get()
    client.force_login(
        make_user("other", "smtpsettings.view_smtpsettings", "smtpsettings.change_smtpsettings")
    )
    assert client.get(f"/settings/smtp/test/{run.pk}/").status_code == 404
