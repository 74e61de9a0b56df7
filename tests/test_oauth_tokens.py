"""OAuth 2.0 sign-in (AUTH XOAUTH2) against a real HTTPS token endpoint and a real SMTP server
on loopback: Microsoft 365 with a secret or a certificate, Google with a service account,
other providers with a client secret or a rotating refresh token; the shared token, the
retry after a rejected token, and every provider error explained in words."""

from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest
import trustme
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from smtpsettings import oauth, store
from smtpsettings.diagnostics import send_test_email
from smtpsettings.models import OAuthAccessToken, SmtpTestRun
from smtpsettings.tokencache import SharedTokens
from smtpsettings.transport import Step
from tests.oauth_server import (
    XOAuth2Recorder,
    app_certificate,
    ca_bundle,
    service_account,
    token_endpoint,
)
from tests.smtpservers import require_test_host, smtp_server

pytestmark = pytest.mark.django_db
MAILBOX = "alerts@example.com"
RECIPIENT = "bob@example.com"


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def endpoint(ca, tmp_path, monkeypatch, settings):
    """The token endpoint, trusted through SSL_CERT_FILE as the README tells administrators."""
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_bundle(tmp_path, ca)))
    with token_endpoint(ca) as running:
        settings.OAUTH_MICROSOFT_AUTHORITY = running.base
        yield running


@pytest.fixture
def server(endpoint):
    require_test_host()
    recorder = XOAuth2Recorder(endpoint=endpoint)
    with smtp_server(mode="starttls", recorder=recorder) as running:
        yield running


def configure(server, endpoint, provider: str, kind: str, value: str, **fields):
    record = store.load()
    record.sender_email = MAILBOX
    record.host, record.port = server.host, server.port
    record.trusted_certificate = server.certificates.ca_pem if server.certificates else ""
    record.options = {"timeout": 5, **fields.pop("options", {})}
    record.username = fields.pop("username", MAILBOX)
    record.auth_method = "oauth2"
    record.oauth_provider = provider
    record.oauth_tenant = fields.pop("tenant", endpoint.tenant if provider == "microsoft" else "")
    record.oauth_client_id = fields.pop(
        "client_id",
        {"microsoft": endpoint.client_id, "other": endpoint.other_client_id}.get(provider, ""),
    )
    record.oauth_token_url = fields.pop(
        "token_url", endpoint.other_url if provider == "other" else ""
    )
    record.oauth_scope = fields.pop("scope", "")
    assert not fields
    record.seal_secret("oauth_credential_token", {"kind": kind, "value": value})
    record.save()
    return record


def microsoft_secret(server, endpoint, **fields):
    return configure(
        server, endpoint, "microsoft", "client_secret", endpoint.client_secret, **fields
    )


def run_test(record=None):
    return send_test_email(record or store.load(), RECIPIENT)


def step(diagnosis, name):
    return [s for s in diagnosis.steps if s.name == name]


def assert_no_token_in(text: str, endpoint) -> None:
    for secret in [*endpoint.tokens, endpoint.client_secret, endpoint.other_secret]:
        assert secret not in text


# -- the credentials ---------------------------------------------------------------------------


def test_describe_credential_shows_what_may_be_shown(ca, endpoint):
    certificate, pem = app_certificate(ca)
    info = oauth.describe_credential("certificate", pem)
    assert info["x5t"] == oauth.x5t(certificate)
    assert info["subject"] and info["not_after"].startswith("3000-")
    assert "PRIVATE" not in json.dumps(info)
    account = json.loads(service_account(endpoint))
    info = oauth.describe_credential("service_account", json.dumps(account))
    assert info == {
        "kind": "service_account",
        "client_email": account["client_email"],
        "private_key_id": account["private_key_id"],
        "token_uri": account["token_uri"],
    }


@pytest.mark.parametrize(
    ("kind", "value", "words"),
    [
        ("certificate", "hello", "not a PEM certificate"),
        ("certificate", "CERT_ONLY", "private key is missing"),
        ("certificate", "OTHER_KEY", "does not belong to the certificate"),
        ("service_account", "{}", "not a service-account key"),
        ("service_account", "not json", "paste the whole JSON file"),
        ("client_secret", "  ", "empty"),
    ],
)
def test_describe_credential_says_what_is_wrong(ca, kind, value, words):
    leaf = ca.issue_cert("app.example")
    if value == "CERT_ONLY":
        value = leaf.cert_chain_pems[0].bytes().decode()
    elif value == "OTHER_KEY":
        other = ca.issue_cert("other.example").private_key_pem.bytes().decode()
        value = leaf.cert_chain_pems[0].bytes().decode() + other
    with pytest.raises(oauth.InvalidCredential, match=words):
        oauth.describe_credential(kind, value)


def test_token_endpoint_per_provider(settings):
    settings.OAUTH_MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
    record = store.load()
    record.oauth_provider, record.oauth_tenant = "microsoft", "contoso.onmicrosoft.com"
    assert (
        oauth.token_endpoint(record)
        == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    record.oauth_provider = "google"
    assert oauth.token_endpoint(record) == "https://oauth2.googleapis.com/token"
    record.oauth_provider, record.oauth_token_url = "other", "https://idp.example/token"
    assert oauth.token_endpoint(record) == "https://idp.example/token"


# -- signing in ------------------------------------------------------------------------------


def test_microsoft_with_a_client_secret(server, endpoint):
    microsoft_secret(server, endpoint)
    diagnosis = run_test()
    assert diagnosis.delivered, diagnosis.problem
    assert server.recorder.logins == [f"XOAUTH2 {MAILBOX}"]
    assert endpoint.requests == ["client_credentials"]
    (token,) = step(diagnosis, "token")
    assert endpoint.microsoft_url in token.detail and "HTTP 200" in token.detail
    assert "valid for 3600 s" in token.detail
    assert step(diagnosis, "auth")[0].detail == f"XOAUTH2 as {MAILBOX}"
    # The next sign-in, by this or any worker, uses the shared token.
    again = run_test()
    assert again.delivered and endpoint.count == 1
    assert "cached token" in step(again, "token")[0].detail
    transcript = json.dumps([diagnosis.as_dict(), again.as_dict()])
    assert_no_token_in(transcript, endpoint)


def test_microsoft_with_a_certificate(ca, server, endpoint):
    certificate, pem = app_certificate(ca)
    endpoint.certificate = certificate
    configure(server, endpoint, "microsoft", "certificate", pem)
    diagnosis = run_test()
    assert diagnosis.delivered, diagnosis.problem
    assert server.recorder.logins == [f"XOAUTH2 {MAILBOX}"]


def test_google_service_account(server, endpoint):
    server.recorder.style = "google"
    key = service_account(endpoint, users=(MAILBOX,))
    configure(server, endpoint, "google", "service_account", key)
    diagnosis = run_test()
    assert diagnosis.delivered, diagnosis.problem
    assert endpoint.requests == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert endpoint.google_url in step(diagnosis, "token")[0].detail
    assert "scope https://mail.google.com/" in step(diagnosis, "token")[0].detail


def test_other_provider_with_a_client_secret(server, endpoint):
    configure(server, endpoint, "other", "client_secret", endpoint.other_secret, scope="smtp")
    assert run_test().delivered
    assert endpoint.requests == ["client_credentials"]


def test_rotated_refresh_token_is_stored_even_when_the_send_then_fails(server, endpoint):
    endpoint.refresh_tokens = {"rt-first"}
    configure(server, endpoint, "other", "refresh_token", "rt-first")
    server.recorder.refuse_with = "535 5.7.3 Authentication unsuccessful"
    failed = run_test()
    assert failed.problem is not None and failed.problem.step == "auth"
    (rotated,) = endpoint.rotated
    assert endpoint.refresh_tokens == {rotated}  # the provider forgot the first one
    stored = store.load()
    assert stored.reveal_secret("oauth_credential_token") == {
        "kind": "refresh_token",
        "value": rotated,
    }
    # The stored, rotated token keeps working once the server accepts again.
    server.recorder.refuse_with = ""
    OAuthAccessToken.objects.all().delete()
    assert run_test(stored).delivered
    assert len(endpoint.rotated) == 2


def test_a_stale_record_uses_the_refresh_token_another_worker_stored(server, endpoint):
    endpoint.refresh_tokens = {"rt-first"}
    stale = configure(server, endpoint, "other", "refresh_token", "rt-first")
    assert run_test(store.load()).delivered  # another worker: rotates, stores
    OAuthAccessToken.objects.all().delete()  # its access token is gone too
    assert run_test(stale).delivered, "the stale record would have sent the revoked rt-first"


def test_a_revoked_cached_token_is_dropped_and_one_fresh_token_tried(server, endpoint):
    microsoft_secret(server, endpoint)
    assert run_test().delivered
    endpoint.revoke_all()
    diagnosis = run_test()
    assert diagnosis.delivered, diagnosis.problem
    assert endpoint.count == 2
    assert [accepted for _, accepted in server.recorder.xoauth2] == [True, False, True]


def test_a_refused_fresh_token_is_one_refresh_then_a_clear_failure(server, endpoint):
    microsoft_secret(server, endpoint)
    assert run_test().delivered
    server.recorder.refuse_with = "535 5.7.3 Authentication unsuccessful [SN4PR0501CA0032]"
    diagnosis = run_test()
    assert endpoint.count == 2  # the cached token, then exactly one fresh one
    assert [accepted for _, accepted in server.recorder.xoauth2] == [True, False, False]
    problem = diagnosis.problem
    assert problem.step == "auth" and problem.server_reply.startswith("535 5.7.3")
    assert "SMTP.SendAsApp" in problem.advice and "New-ServicePrincipal" in problem.advice
    assert "a new one was fetched and refused too" in problem.advice


# -- every error, in words -------------------------------------------------------------------

MICROSOFT_CASES = {
    "AADSTS7000215": ("client_secret", {"value": "wrong"}, "the client secret is wrong"),
    "AADSTS7000222": ("client_secret", {"expired": True}, "the client secret has expired"),
    "AADSTS700016": (
        "client_secret",
        {"client_id": "00000000-0000-0000-0000-000000000000"},
        "no application with this client ID exists in this tenant",
    ),
    "AADSTS90002": (
        "client_secret",
        {"tenant": "nosuch.onmicrosoft.com"},
        "the tenant was not found",
    ),
    "AADSTS700027": ("certificate", {"unregistered": True}, "the certificate's signed assertion"),
}


@pytest.mark.parametrize("code", MICROSOFT_CASES)
def test_microsoft_token_errors_in_words(ca, server, endpoint, code):
    kind, case, meaning = MICROSOFT_CASES[code]
    fields = {k: v for k, v in case.items() if k in ("client_id", "tenant")}
    if kind == "certificate":
        endpoint.certificate = app_certificate(ca)[0]  # registered: another certificate
        value = app_certificate(ca)[1]
    else:
        value = case.get("value", endpoint.client_secret)
        endpoint.secret_expired = case.get("expired", False)
    configure(server, endpoint, "microsoft", kind, value, **fields)
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("smtp_settings", "test", f"--to={RECIPIENT}", stdout=out)
    words = out.getvalue() + str(raised.value)
    assert f"{code} means {meaning}" in words
    assert "FAIL Token" in out.getvalue()
    assert server.recorder.xoauth2 == []  # nothing reached the SMTP server's AUTH
    problem = run_test().problem
    assert problem.step == "token" and not problem.temporary  # refused credentials: permanent
    assert code in problem.server_reply
    assert_no_token_in(words, endpoint)


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("scope not delegated", "unauthorized_client means the client may not get tokens"),
        ("unknown mailbox", "invalid_grant means the grant was refused"),
    ],
)
def test_google_token_errors_in_words(server, endpoint, case, words):
    key = service_account(endpoint, users=(MAILBOX,))
    if case == "scope not delegated":
        endpoint.google_delegated_scopes = set()
        advice = "Manage Domain Wide Delegation"
        username = MAILBOX
    else:
        advice = "this machine's clock"
        username = "nobody@example.com"
    configure(server, endpoint, "google", "service_account", key, username=username)
    problem = run_test().problem
    assert problem.step == "token" and not problem.temporary
    assert words in problem.advice and advice in problem.advice


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        ("535 5.7.3 Authentication unsuccessful", "SMTP.SendAsApp"),
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
            "for the Tenant.",
            "SmtpClientAuthenticationDisabled",
        ),
        ("535 5.7.8 Username and Password not accepted.", "subject of domain-wide delegation"),
    ],
)
def test_smtp_refusals_after_a_token_in_words(server, endpoint, reply, words):
    server.recorder.refuse_with = reply
    if "5.7.8" in reply:
        server.recorder.style = "google"
        configure(server, endpoint, "google", "service_account", service_account(endpoint))
    else:
        microsoft_secret(server, endpoint)
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("smtp_settings", "test", f"--to={RECIPIENT}", stdout=out)
    assert words in str(raised.value)
    assert "ok   Token" in out.getvalue()
    assert "FAIL AUTH" in out.getvalue() and reply.split(",")[0] in out.getvalue()
    assert endpoint.count == 1  # a fresh token refused: no second one
    assert_no_token_in(out.getvalue() + str(raised.value), endpoint)


# -- the token endpoint unavailable ------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["down", "slow", "5xx"])
def test_token_endpoint_trouble_is_temporary(server, endpoint, trouble):
    microsoft_secret(server, endpoint, options={"timeout": 1})
    if trouble == "down":
        endpoint.down = True
    elif trouble == "slow":
        endpoint.delay = 2
    else:
        endpoint.status_5xx = 503
    problem = run_test().problem
    assert problem.step == "token" and problem.temporary
    assert "will be retried" in problem.advice
    assert server.recorder.xoauth2 == []
    # The lease was given back: the next worker asks at once instead of waiting for it.
    assert not OAuthAccessToken.objects.filter(fetched_at__gt=timezone.now()).exists()


def test_token_endpoint_is_verified_against_the_trust_store(
    server, endpoint, monkeypatch, tmp_path
):
    microsoft_secret(server, endpoint)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_bundle(tmp_path / "x", trustme.CA())))
    problem = run_test().problem
    assert problem.kind == "token-untrusted" and "SSL_CERT_FILE" in problem.advice
    assert endpoint.count == 0  # the secret never reached an unverified endpoint


def test_no_token_over_an_unencrypted_connection(endpoint):
    recorder = XOAuth2Recorder(endpoint=endpoint)
    with smtp_server(mode="plain", recorder=recorder, auth=False) as server:
        record = microsoft_secret(server, endpoint, options={"auto_tls": False})
        problem = run_test(record).problem
    assert problem.step == "auth"
    assert endpoint.count == 0 and recorder.xoauth2 == []


def test_tokens_never_reach_the_log(server, endpoint, caplog):
    caplog.set_level(logging.DEBUG)
    microsoft_secret(server, endpoint)
    assert run_test().delivered
    endpoint.revoke_all()
    assert run_test().delivered
    assert endpoint.tokens
    assert_no_token_in(caplog.text, endpoint)
    row = OAuthAccessToken.objects.get()
    assert_no_token_in(json.dumps([row.token, row.scope, row.key]), endpoint)


def test_the_test_page_shows_the_token_step_and_never_the_token(
    server, endpoint, admin_client, admin_user
):
    microsoft_secret(server, endpoint)
    first, cached = run_test(), run_test()
    pages = ""
    for diagnosis in (first, cached):
        run = SmtpTestRun.objects.create(
            requested_by=admin_user,
            recipient=RECIPIENT,
            config={},
            result=diagnosis.as_dict(),
            finished_at=timezone.now(),
        )
        response = admin_client.get(reverse("smtpsettings:test_run", args=[run.pk]))
        assert response.status_code == 200
        pages += response.content.decode()
    assert "Token" in pages and endpoint.microsoft_url in pages and "cached token" in pages
    assert f"XOAUTH2 as {MAILBOX}" in pages
    settings_page = admin_client.get(reverse("smtpsettings:page")).content.decode()
    assert_no_token_in(pages + settings_page, endpoint)


def test_credentials_go_only_to_an_https_token_url(server, endpoint):
    plain = endpoint.other_url.replace("https://", "http://")
    configure(server, endpoint, "other", "client_secret", endpoint.other_secret, token_url=plain)
    problem = run_test().problem
    assert problem.step == "token" and problem.kind == "token-url"
    assert "https://" in problem.advice
    assert endpoint.count == 0


def test_a_token_is_renewed_early_by_a_tenth_of_its_life_at_most_five_minutes():
    from smtpsettings.tokencache import refresh_margin

    assert refresh_margin(timedelta(hours=1)) == timedelta(minutes=5)
    assert refresh_margin(timedelta(seconds=10)) == timedelta(seconds=1)


def test_authentication_none_sends_without_signing_in(server, endpoint):
    record = microsoft_secret(server, endpoint)
    record.auth_method = "none"
    record.save()
    diagnosis = run_test()
    assert diagnosis.delivered, diagnosis.problem
    assert step(diagnosis, "auth") == [] and step(diagnosis, "token") == []
    assert server.recorder.xoauth2 == [] and endpoint.count == 0


def test_oauth_without_a_mailbox_says_so(server, endpoint):
    record = microsoft_secret(server, endpoint)
    record.username = ""
    problem = run_test(record).problem
    assert problem.step == "settings" and "mailbox to send as in User" in problem.advice
    assert endpoint.count == 0


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("oauth_tenant", "Enter the Microsoft 365 tenant"),
        ("oauth_client_id", "Enter the client ID"),
        ("oauth_provider", "Choose the OAuth 2.0 provider"),
    ],
)
def test_incomplete_oauth_settings_say_what_is_missing(server, endpoint, field, words):
    record = microsoft_secret(server, endpoint)
    setattr(record, field, "")
    problem = run_test(record).problem
    assert problem.step == "settings" and words in problem.advice
    assert endpoint.count == 0


def test_a_lease_left_by_a_dead_worker_runs_out(server, endpoint):
    record = microsoft_secret(server, endpoint)
    tokens = SharedTokens(record, timeout=5)
    key = tokens._binding()[0]
    OAuthAccessToken.objects.create(key=key, fetched_at=timezone.now() + timedelta(seconds=1))
    token, cached = tokens.get(Step("token", True, 0.0))
    assert not cached and endpoint.live(token) and endpoint.count == 1


def test_an_ec_certificate_is_refused_before_it_reaches_microsoft(ca, server, endpoint):
    leaf = ca.issue_cert("app.example")  # trustme's default key is EC
    pem = leaf.cert_chain_pems[0].bytes().decode() + leaf.private_key_pem.bytes().decode()
    configure(server, endpoint, "microsoft", "certificate", pem)
    problem = run_test().problem
    assert problem.step == "token" and "only with RSA certificates" in problem.advice
    assert endpoint.count == 0
