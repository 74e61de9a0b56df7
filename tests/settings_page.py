"""Driving Settings -> SMTP as an administrator would: the form's values, "Send test e-mail"
run by the worker task, and a send with the saved settings as every invitation makes one."""

from __future__ import annotations

from django.core.mail import EmailMessage

from smtpsettings.backends import StoredSettingsBackend
from smtpsettings.problems import SmtpProblem
from smtpsettings.tasks import run_smtp_test

URL = "/settings/smtp/"


def form_values(server, **changes) -> dict[str, str]:
    """The settings form filled in for `server`, no sign-in, as posted."""
    return {
        "sender_email": "gateway@example.com",
        "sender_name": "",
        "host": server.host,
        "port": str(server.port),
        "encryption": "auto",
        "username": "",
        "password": "",
        "options": '{"timeout": 5}',
        "trusted_certificate": "",
        "test_to": "admin@example.com",
        **changes,
    }


def run_test(client, data: dict[str, str]) -> str:
    """Press "Send test e-mail", let the worker's task run it, and read the result frame."""
    response = client.post(URL, {**data, "action": "test"})
    assert response.status_code == 200
    run = response.context["test_run"]
    assert run is not None, response.context["form"].errors
    assert f'src="/settings/smtp/test/{run.pk}/"' in response.content.decode()
    run_smtp_test.call(run.pk)
    return client.get(f"/settings/smtp/test/{run.pk}/").content.decode()


def send_with_stored_settings() -> SmtpProblem | None:
    """What every invitation and notification does: send with the saved settings."""
    message = EmailMessage("Hello", "Body", "gateway@example.com", ["bob@example.com"])
    try:
        StoredSettingsBackend().send_messages([message])
    except SmtpProblem as problem:
        return problem
    return None
