"""Issue 14, "Bulk invites that finish" and the Users page at scale: a paste of thousands of
addresses is invited in full, with a cost per address that does not grow, and a submission too
large for one request is saved first and finished by a worker, whatever happens to the request
or to the worker. Small sizes here; the big ones are in bench/bulk_invite.py."""

from __future__ import annotations

import contextlib
import html
import re
from email import message_from_bytes, policy

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test.signals import template_rendered
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gatewaymgr import invitations
from gatewaymgr.addresses import Invitee
from gatewaymgr.models import Invitation
from notifications.backends import OutboxBackend
from notifications.models import Integration, OutboundEmail
from tests.conftest import make_user
from tests.workers import wait_until

pytestmark = pytest.mark.django_db
LINK = re.compile(r"https://console\.example\.com/invite/([A-Za-z0-9_-]+)/")


@pytest.fixture(autouse=True)
def _public_url(settings):
    settings.PUBLIC_URL = "https://console.example.com"


def addresses(count: int, prefix: str = "person") -> list[str]:
    return [f"{prefix}{number}@example.com" for number in range(count)]


def finish_background_invites() -> None:
    """What a worker does with the submissions waiting for it, run here in the test."""
    for batch in invitations.unfinished_batches():
        invitations.run_batch(batch.pk)


def explain(sql: str) -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # On a small table a sequential scan is cheapest; the question is whether the
            # index CAN serve the query, which it cannot for UPPER(email) LIKE UPPER(...).
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute(f"EXPLAIN {sql}")
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        return "\n".join(str(row[-1]) for row in cursor.fetchall())


def searched_by(plan: str, table: str, condition: str) -> bool:
    """Whether the plan looks rows up through an index on `condition`, rather than reading
    the whole table or the whole of an index."""
    if connection.vendor == "postgresql":
        return bool(re.search(rf"Index Cond: .*{condition}", plan))
    return bool(re.search(rf"SEARCH {table} .*{condition}", plan))


# --- A paste of thousands is invited in full ----------------------------------------------------


def test_a_paste_of_1200_addresses_invites_all_of_them_not_the_first_1000(admin_client):
    box = "\n".join(addresses(1_200))
    response = admin_client.post("/users/", {"addresses": box, "valid_days": "7"})
    assert response.status_code in (200, 302)
    assert "at most 1,000 addresses" not in response.content.decode()
    finish_background_invites()
    assert Invitation.objects.count() == 1_200
    assert OutboundEmail.objects.filter(category="invitation").count() == 1_200
    page = admin_client.get("/users/").content.decode()
    assert "1,200 of 1,200 invited" in page


def test_a_submission_survives_the_request_being_killed_midway(admin_client, monkeypatch):
    """gunicorn's timeout kills the worker in the middle of the request (SystemExit here): the
    submission must already be saved, so a worker finishes it and nobody is lost."""
    calls = {"n": 0}
    real_store = OutboxBackend.store

    def dies_on_the_second_chunk(self, messages):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("worker timeout")
        return real_store(self, messages)

    monkeypatch.setattr(OutboxBackend, "store", dies_on_the_second_chunk)
    box = "\n".join(addresses(1_200))
    with contextlib.suppress(SystemExit):  # the request dies, as past gunicorn's timeout
        admin_client.post("/users/", {"addresses": box, "valid_days": "7"})
    with contextlib.suppress(SystemExit):  # and a task worker dies after its first chunk
        finish_background_invites()
    monkeypatch.setattr(OutboxBackend, "store", real_store)
    finish_background_invites()  # another worker takes it up
    assert Invitation.objects.count() == 1_200
    # Each address once: no chunk was invited twice.
    assert OutboundEmail.objects.filter(category="invitation").count() == 1_200


def test_a_batch_resumes_where_the_dead_worker_left_it(admin_client, monkeypatch):
    monkeypatch.setattr(invitations, "INLINE_MAX", 10)
    monkeypatch.setattr(invitations, "BATCH_CHUNK", 25)
    box = "\n".join([*addresses(60), "Existing <existing@example.com>"])
    make_user("existing")
    response = admin_client.post("/users/", {"addresses": box, "valid_days": "7"})
    assert response.status_code == 302
    (batch,) = invitations.unfinished_batches()
    assert Invitation.objects.count() == 0  # saved first: nothing invited in the request
    assert "0 of 61 invited" in admin_client.get("/users/").content.decode()

    real_store = OutboxBackend.store
    calls = {"n": 0}

    def dies_on_the_second_chunk(self, messages):
        calls["n"] += 1
        if calls["n"] == 2:
            raise SystemExit("worker killed")
        return real_store(self, messages)

    monkeypatch.setattr(OutboxBackend, "store", dies_on_the_second_chunk)
    with pytest.raises(SystemExit):
        invitations.run_batch(batch.pk)
    page = admin_client.get("/users/").content.decode()
    assert "25 of 61 invited" in page  # the first chunk is committed with its progress
    assert Invitation.objects.count() == 25

    monkeypatch.setattr(OutboxBackend, "store", real_store)
    invitations.run_batch(batch.pk)
    invitations.run_batch(batch.pk)  # a second run of a finished batch does nothing
    assert Invitation.objects.count() == 60
    assert OutboundEmail.objects.filter(category="invitation").count() == 60
    page = admin_client.get("/users/").content.decode()
    assert "60 of 61 invited, 1 problem" in page
    assert "existing@example.com already has an account (existing)" in page
    assert not invitations.unfinished_batches()
    batch.refresh_from_db()
    assert batch.invitees == []  # the addresses are not kept twice once invited


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_invites_a_large_submission_in_the_background(
    admin_client, workers, monkeypatch
):
    monkeypatch.setattr(invitations, "INLINE_MAX", 10)
    box = "\n".join(addresses(30))
    response = admin_client.post("/users/", {"addresses": box, "valid_days": "7"})
    assert response.status_code == 302
    page = admin_client.get("/users/").content.decode()
    assert "Inviting 30 addresses in the background" in page
    workers()
    wait_until(lambda: not invitations.unfinished_batches(), what="the batch to be invited")
    assert Invitation.objects.count() == 30
    assert "Invited in the background: 30 of 30 invited, 0 problems" in (
        admin_client.get("/users/").content.decode()
    )


@pytest.mark.django_db(transaction=True)
def test_a_batch_left_by_a_dead_worker_is_finished_by_a_live_one_unasked(workers):
    """No task queued for it, its lease run out, half done: as a killed worker leaves it."""
    invitations.invite([Invitee(a) for a in addresses(20)])
    batch = invitations.InvitationBatch.objects.create(
        invitees=[[a, ""] for a in addresses(40)], total=40, done=20, invited=20
    )
    workers()
    wait_until(lambda: not invitations.unfinished_batches(), what="the batch to be resumed")
    batch.refresh_from_db()
    assert batch.progress == "40 of 40 invited, 0 problems"
    assert Invitation.objects.count() == 40
    # The first 20 were not invited again by the resumed run.
    assert OutboundEmail.objects.filter(category="invitation").count() == 40


def test_a_stalled_batch_is_queued_again(admin_client, monkeypatch):
    monkeypatch.setattr(invitations, "INLINE_MAX", 2)
    admin_client.post("/users/", {"addresses": "\n".join(addresses(5)), "valid_days": "7"})
    (batch,) = invitations.unfinished_batches()
    assert invitations.resume_stalled_batches() == 0  # its task is queued and not late yet
    invitations.InvitationBatch.objects.filter(pk=batch.pk).update(lease_until=None)
    assert invitations.resume_stalled_batches() == 1
    assert invitations.resume_stalled_batches() == 0  # queued again once, not at every look


# --- The cost per address does not grow ---------------------------------------------------------


def statements_to_invite(emails: list[str]) -> int:
    with CaptureQueriesContext(connection) as queries:
        invitations.invite([Invitee(address) for address in emails])
    return len(queries)


def test_inviting_10_or_40_addresses_costs_the_same_statements():
    # (Past about 50 rows SQLite splits an INSERT, at most 999 values each: still per chunk.)
    Integration.objects.create(name="HR", recipients=["hr@example.com"], events=["user.invited"])
    invitations.invite([Invitee(a) for a in addresses(25, "again")])  # half are invited again
    small = statements_to_invite(addresses(5, "again") + addresses(5, "new"))
    large = statements_to_invite(addresses(25, "again")[5:] + addresses(20, "fresh"))
    assert large == small, f"10 addresses: {small} statements, 40: {large}"
    assert Invitation.objects.count() == 50
    assert OutboundEmail.objects.filter(category="invitation").count() == 75


def test_the_duplicate_check_uses_the_lower_case_index():
    # Enough rows that the planner's choice means something; ANALYZE for its statistics.
    Invitation.objects.bulk_create(
        Invitation(email=a, token_hash=a, expires_at=timezone.now()) for a in addresses(500)
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE gatewaymgr_invitation")
    with CaptureQueriesContext(connection) as queries:
        invitations.invite([Invitee(a) for a in ["Person1@example.com", "new@example.com"]])
    reads = [
        q["sql"]
        for q in queries
        if q["sql"].startswith("SELECT") and 'FROM "gatewaymgr_invitation"' in q["sql"]
    ]
    assert reads
    for sql in reads:
        plan = explain(sql)
        index = "lower" if connection.vendor == "postgresql" else "one_open_invitation"
        assert searched_by(plan, "gatewaymgr_invitation", index), f"{sql}\n{plan}"


def test_the_email_is_rendered_once_per_batch_with_each_invitees_own_escaped_parts():
    rendered: list[str] = []

    def count(sender, template, **kwargs):
        rendered.append(template.name)

    template_rendered.connect(count)
    try:
        invitees = [Invitee(f"p{n}@example.com", f'<b>Tom & "Jerry" {n}</b>') for n in range(20)]
        invitees += [Invitee(f"q{n}@example.com") for n in range(5)]
        report = invitations.invite(invitees)
    finally:
        template_rendered.disconnect(count)
    assert rendered.count("invitations/email.html") <= 2, rendered
    assert rendered.count("invitations/email.txt") <= 2, rendered
    tokens = set()
    for invitation in report.invited:
        email = OutboundEmail.objects.get(cause_id=str(invitation.pk))
        message = message_from_bytes(email.message_bytes(), policy=policy.default)
        text = message.get_body(("plain",)).get_content()
        page = message.get_body(("html",)).get_content()
        (token,) = set(LINK.findall(text))
        assert set(LINK.findall(page)) == {token}
        assert invitations.hash_token(token) == invitation.token_hash
        tokens.add(token)
        if invitation.name:
            assert f"Hello {invitation.name}," in text
            assert f"Hello {html.escape(invitation.name)}," in page
            assert "<b>" not in page
        else:
            assert "Hello," in text and "Hello," in page
    assert len(tokens) == 25


def test_the_invite_command_takes_the_same_set_based_path(capsys):
    def statements(emails: list[str]) -> int:
        with CaptureQueriesContext(connection) as queries:
            call_command("invite", *emails)
        return len(queries)

    statements(addresses(3, "first"))  # the first look-ups (content types, settings) are kept
    assert statements(addresses(5)) == statements(addresses(40, "more"))
    assert Invitation.objects.count() == 48
    assert "40 invitation e-mail(s) queued" in capsys.readouterr().out


# --- The Users page at scale --------------------------------------------------------------------


def test_the_user_list_is_paginated(admin_client):
    User.objects.bulk_create([User(username=f"user{n:03}") for n in range(120)])
    page = admin_client.get("/users/").content.decode()
    users = page.split('id="users"')[1]
    assert users.count("<tr>") - 1 <= 50  # the header row and a page of users
    assert "user000" in users and "user119" not in users
    last = admin_client.get("/users/", {"users_page": 3}).content.decode().split('id="users"')[1]
    assert "user119" in last and "user000" not in last


def test_the_counts_stop_at_the_cap_and_say_so(admin_client, monkeypatch):
    monkeypatch.setattr(invitations, "COUNT_CAP", 5)
    invitations.invite([Invitee(a) for a in addresses(8)])
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get("/users/").content.decode()
    assert 'Pending <span class="count">5+</span>' in page
    assert 'Accepted <span class="count">0</span>' in page
    counts = [q["sql"] for q in queries if q["sql"].startswith("SELECT COUNT(*)")]
    counts = [sql for sql in counts if "gatewaymgr_invitation" in sql]
    assert len(counts) == 4 and all("LIMIT 6" in sql for sql in counts), counts


def test_the_invitation_list_pages_by_key_not_by_offset(admin_client):
    invitations.invite([Invitee(a) for a in addresses(60)])
    with CaptureQueriesContext(connection) as queries:
        first = admin_client.get("/users/")
    newer = re.search(r'href="(\?[^"]*older=[^"]*)"', first.content.decode())
    assert newer, "a link to the older invitations"
    second = admin_client.get("/users/" + html.unescape(newer.group(1)))
    shown = re.findall(r'data-email="([^"]+)"', first.content.decode())
    rest = re.findall(r'data-email="([^"]+)"', second.content.decode())
    assert len(shown) == 50 and len(rest) == 10 and not set(shown) & set(rest)
    sql = [q["sql"] for q in queries if "gatewaymgr_invitation" in q["sql"]]
    assert not any(" OFFSET " in s for s in sql), sql


def test_the_delivery_status_lookup_uses_the_cause_index(admin_client):
    invitations.invite([Invitee(a) for a in addresses(3)])
    if connection.vendor == "postgresql":
        # A table as a year leaves it (other invitations' e-mails), and its statistics: on a
        # few rows reading them all is cheapest, and the plan says nothing.
        quote = connection.ops.quote_name
        columns = [f.column for f in OutboundEmail._meta.concrete_fields if not f.primary_key]
        copied = [f"{quote(c)} || '-' || n" if c == "cause_id" else quote(c) for c in columns]
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO notifications_outboundemail ({', '.join(map(quote, columns))}) "
                f"SELECT {', '.join(copied)} FROM notifications_outboundemail, "
                "generate_series(1, 3000) n"
            )
            cursor.execute("ANALYZE notifications_outboundemail")
    with CaptureQueriesContext(connection) as queries:
        admin_client.get("/users/")
    (lookup,) = [
        q["sql"]
        for q in queries
        if 'FROM "notifications_outboundemail"' in q["sql"] and '"cause_id" IN' in q["sql"]
    ]
    plan = explain(lookup)
    # Found by cause, not by reading every invitation's e-mail (all share one cause_type).
    assert searched_by(plan, "notifications_outboundemail", "cause_id"), plan
