"""Signing in (issue 13): the next mechanism is tried only when the server says the mechanism
itself is unsupported (504 and the like), never after a 535; and the missing-AUTH advice names
what to change. Every attempt is counted on the server's side."""

from __future__ import annotations

import pytest

from smtpsettings.problems import SmtpProblem
from tests.smtpservers import PASSWORD, USERNAME, require_test_host
from tests.tls_servers import RefusingPlain, problem_of, send, tls_server, transport


@pytest.fixture(autouse=True)
def _test_host():
    require_test_host()


def test_a_wrong_password_costs_one_failed_sign_in():
    """Trying LOGIN after PLAIN's 535 doubles the failed sign-ins a server counts against the
    account (and Dovecot's failure delay)."""
    with tls_server(mode="starttls", auth=True) as server:
        sender = transport(server, host="127.0.0.1", user=USERNAME, password="wrong")
        problem = problem_of(sender)
    assert problem.kind == "auth-refused"
    assert problem.reply[0] == 535
    assert server.recorder.sign_in_attempts == [("PLAIN", True)]
    assert server.messages == []


def test_an_unsupported_mechanism_moves_on_to_the_next():
    """A server that offers PLAIN but answers it 504 (unrecognized) gets LOGIN next."""
    with tls_server(mode="starttls", auth=True, smtp_class=RefusingPlain) as server:
        send(transport(server, host="127.0.0.1", user=USERNAME, password=PASSWORD))
    assert server.recorder.sign_in_attempts == [("PLAIN", True), ("LOGIN", True)]
    assert server.recorder.logins == [f"LOGIN {USERNAME}"]
    assert len(server.messages) == 1


def test_missing_auth_on_loopback_names_require_tls_when_starttls_was_not_used():
    """A loopback relay that offers AUTH only after STARTTLS, with auto_tls off: the advice
    must say how to get STARTTLS (require_tls, or removing auto_tls: false)."""
    with tls_server(mode="starttls", auth=True, auth_require_tls=True) as server:
        sender = transport(
            server, host="127.0.0.1", user=USERNAME, password=PASSWORD, auto_tls=False
        )
        problem = problem_of(sender)
    assert problem.kind == "auth-missing"
    assert '{"require_tls": true}' in problem.advice
    assert "auto_tls: false" in problem.advice
    assert server.recorder.sign_in_attempts == []


def test_missing_auth_over_tls_does_not_suggest_starttls():
    with tls_server(mode="starttls", auth=False) as server:
        problem = problem_of(transport(server, host="127.0.0.1", user=USERNAME, password="x"))
    assert isinstance(problem, SmtpProblem) and problem.kind == "auth-missing"
    assert "require_tls" not in problem.advice
    assert "Leave User blank" in problem.advice
