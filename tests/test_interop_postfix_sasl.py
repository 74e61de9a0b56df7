"""AUTH against a real Postfix with Dovecot SASL (smtpd_sasl_type = dovecot), through the
stored-settings backend, on the real submission ports: 587 (STARTTLS, AUTH only after it) and
465 (TLS from the first byte). Each case reads what Postfix and Dovecot logged: the signed-in
client line (sasl_method, sasl_username) and the delivery of that queue ID, or the refused
AUTH commands.

Two instances, one after the other (the ports are fixed): Dovecot offering "PLAIN LOGIN", its
usual configuration, where the product signs in with PLAIN; and Dovecot offering only LOGIN.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import make_msgid

import pytest
from django.core.mail import EmailMessage, get_connection

from smtpsettings import store
from smtpsettings.diagnostics import send_test_email
from smtpsettings.problems import SmtpProblem
from tests.components import missing

BACKEND = "smtpsettings.backends.StoredSettingsBackend"
HOSTNAME = "postfix.gatewaymgr.test"
ADDRESS = "127.0.0.3"
# The end of a session whose AUTH all failed: "disconnect from ... starttls=1 auth=0/1 ...".
REFUSED_SESSION_END = " auth=0/"
pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Submission:
    postfix: object  # tests.postfix_server.PostfixInstance
    sasl: object  # tests.dovecot_sasl.DovecotSasl
    mechanism: str  # what the product should sign in with


@pytest.fixture(scope="module", params=[("PLAIN", "LOGIN"), ("LOGIN",)], ids=["PLAIN", "LOGIN"])
def submission(request) -> Iterator[Submission]:
    from tests.dovecot_sasl import running_dovecot_sasl
    from tests.postfix_server import running_postfix

    try:
        address = socket.gethostbyname(HOSTNAME)
    except OSError:
        address = None
    if address != ADDRESS:
        missing(f"{HOSTNAME} does not resolve to {ADDRESS} (add it to /etc/hosts, as .ci/run does)")
    with (
        running_dovecot_sasl(mechanisms=request.param) as sasl,
        running_postfix(address=ADDRESS, hostname=HOSTNAME, sasl=sasl) as postfix,
    ):
        yield Submission(postfix, sasl, request.param[0])


def configure(
    submission: Submission, port: int, password: str, *, host: str = HOSTNAME, options=None
) -> None:
    record = store.load()
    record.sender_email = "gateway@example.com"
    record.host, record.port, record.encryption = host, port, "auto"
    record.options = {"timeout": 10, **(options or {})}
    # Verified TLS: the product sends no password to a remote host over anything less.
    record.trusted_certificate = submission.postfix.certificate_pem
    record.auth_method = "password"
    record.username = submission.sasl.username
    record.seal_password(password)
    record.save()


def send(subject: str) -> str:
    """Send one message with the stored settings; its Message-ID, to find it in the log."""
    message_id = make_msgid(domain="gatewaymgr.test")
    message = EmailMessage(
        subject, "Hello Postfix.", None, ["someone@example.com"], headers={"Message-ID": message_id}
    )
    assert get_connection(BACKEND).send_messages([message]) == 1
    return message_id


def queue_id(line: str) -> str:
    # "... postfix/submission/smtpd[123]: 3928826C6A2: client=..., sasl_method=PLAIN, ..."
    return line.split(": ")[1]


@pytest.mark.parametrize("port", [587, 465])
def test_right_password_signs_in_and_postfix_delivers(submission, port):
    postfix, sasl = submission.postfix, submission.sasl
    logins, delivered = len(postfix.sasl_logins()), len(postfix.delivered())
    refused, mismatches = len(postfix.failed_logins()), len(sasl.failed_logins())
    configure(submission, port, sasl.password)

    message_id = send(f"AUTH {submission.mechanism} on {port}")

    postfix.wait_delivered(delivered + 1)
    (login,) = postfix.sasl_logins()[logins:]
    service = {587: "postfix/submission/smtpd", 465: "postfix/smtps/smtpd"}[port]
    assert service in login
    assert f"sasl_method={submission.mechanism}, sasl_username=alice" in login
    queued = queue_id(login)
    assert postfix.lines(f"{queued}: message-id={message_id}")
    assert any(f"{queued}: to=<someone@example.com>" in line for line in postfix.delivered())
    assert postfix.failed_logins()[refused:] == sasl.failed_logins()[mismatches:] == []


@pytest.mark.parametrize("port", [587, 465])
def test_wrong_password_is_refused_once_with_advice_and_nothing_is_received(submission, port):
    postfix, sasl = submission.postfix, submission.sasl
    refused, mismatches = len(postfix.failed_logins()), len(sasl.failed_logins())
    logins, delivered = len(postfix.sasl_logins()), len(postfix.delivered())
    sessions = len(postfix.lines(REFUSED_SESSION_END))
    configure(submission, port, "not the password")

    with pytest.raises(SmtpProblem) as caught:
        send("Wrong password")
    # smtpd's last line of the session counts its commands: "auth=0/1" is one AUTH, refused.
    session_end = postfix.wait_lines(REFUSED_SESSION_END, sessions + 1)[-1]
    assert " auth=0/1 " in session_end, session_end

    problem = caught.value
    assert problem.kind == "auth-refused", str(problem)
    assert "refused the user name or password for alice" in str(problem)
    assert problem.reply and problem.reply[0] == 535
    # One sign-in, one failure: a 535 is the server's verdict on the password, and trying the
    # next mechanism would only cost a second failed login (and Dovecot's failure delay).
    new_refusals = postfix.failed_logins()[refused:]
    assert len(new_refusals) == 1, new_refusals
    assert f"SASL {submission.mechanism} authentication failed" in new_refusals[0]
    assert len(sasl.failed_logins()[mismatches:]) == 1
    assert postfix.sasl_logins()[logins:] == []
    assert postfix.delivered()[delivered:] == []


def test_auth_is_offered_on_587_only_after_starttls(submission):
    postfix = submission.postfix
    with smtplib.SMTP(postfix.address, 587, local_hostname="client.gatewaymgr.test") as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=ssl._create_unverified_context())
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == list(submission.sasl.mechanisms)


def test_without_starttls_no_password_is_sent_and_postfix_relays_nothing(submission):
    """To the loopback address with STARTTLS switched off the product may sign in in clear,
    but Postfix (smtpd_tls_auth_only) offers no AUTH there: the product says so, and Postfix
    saw no AUTH command and received no message."""
    postfix = submission.postfix
    refused, logins = len(postfix.failed_logins()), len(postfix.sasl_logins())
    delivered = len(postfix.delivered())
    configure(submission, 587, submission.sasl.password, host=ADDRESS, options={"auto_tls": False})

    with pytest.raises(SmtpProblem) as caught:
        send("No STARTTLS")

    assert caught.value.kind == "auth-missing", str(caught.value)
    assert "does not offer authentication" in str(caught.value)
    assert postfix.failed_logins()[refused:] == postfix.sasl_logins()[logins:] == []
    assert postfix.delivered()[delivered:] == []


def test_the_test_email_shows_the_sign_in_and_postfixs_queue_id(submission):
    """What Send test e-mail (page and `smtp_settings test`) shows an administrator: the AUTH
    step with the mechanism, the user and Postfix's 235, and DATA with Postfix's own queue ID,
    which is the one Postfix logged for the signed-in client; never the password."""
    postfix, sasl = submission.postfix, submission.sasl
    logins, delivered = len(postfix.sasl_logins()), len(postfix.delivered())
    configure(submission, 587, sasl.password)

    diagnosis = send_test_email(store.load(), "someone@example.com")

    assert diagnosis.delivered, diagnosis.problem
    steps = {step.name: step for step in diagnosis.steps}
    assert steps["auth"].detail == f"{submission.mechanism} as alice"
    assert steps["auth"].reply.startswith("235 2.7.0")
    # "354 End data with <CR><LF>.<CR><LF>, then 250 2.0.0 Ok: queued as 443D6282524"
    queued = re.search(r"\b250 2\.0\.0 Ok: queued as (\w+)$", steps["data"].reply)
    assert queued, steps["data"].reply
    postfix.wait_delivered(delivered + 1)
    (login,) = postfix.sasl_logins()[logins:]
    assert queue_id(login) == queued[1]
    assert sasl.password not in json.dumps(diagnosis.as_dict())


def test_the_test_email_with_a_wrong_password_shows_postfixs_refusal(submission):
    postfix = submission.postfix
    sessions = len(postfix.lines(REFUSED_SESSION_END))
    configure(submission, 465, "not the password")

    diagnosis = send_test_email(store.load(), "someone@example.com")

    problem = diagnosis.as_dict()["problem"]
    assert problem["step"] == "auth" and problem["kind"] == "auth-refused"
    assert "refused the user name or password for alice" in problem["advice"]
    assert problem["server_reply"].startswith("535 5.7.8 Error: authentication failed")
    assert [step.name for step in diagnosis.steps if not step.ok] == ["auth"]
    session_end = postfix.wait_lines(REFUSED_SESSION_END, sessions + 1)[-1]
    assert " auth=0/1 " in session_end, session_end
    assert "not the password" not in json.dumps(diagnosis.as_dict())
