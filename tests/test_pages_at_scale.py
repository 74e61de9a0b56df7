"""The Outbox and Events lists at scale: keyset pages (Newest, Newer, Older, Oldest) that visit
each row once while mail arrives, and views whose work does not grow with the tables.

"Flat" is checked without timing: the number of queries per view, and the work the database
does for the view at two sizes (PostgreSQL: the rows its scans read, from EXPLAIN ANALYZE of
every SELECT the view ran; SQLite: virtual-machine steps counted by a progress handler).
bench/pages.py measures the same pages at a million rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bench import pages as bench
from notifications import outbox
from notifications.models import Event, EventSource, OutboundEmail, Status
from tests.outbox import point_settings_at, queue

pytestmark = pytest.mark.django_db
OUTBOX, EVENTS = "/outbox/", "/events/"


@pytest.fixture(autouse=True)
def _settings():
    point_settings_at("smtp.gatewaymgr.test", 2525)


def row_ids(html: str, base: str) -> list[int]:
    """The rows of the list's table, top to bottom, by the id in their link."""
    table = html.split('<table class="list')[1].split("</table>")[0]
    return [int(pk) for pk in re.findall(rf'href="{base}(\d+)/"', table)]


def pager_links(html: str) -> dict[str, str]:
    """The pager's links by their words: {"Newest": "?…", "Newer": …, "Older": …, "Oldest": …}."""
    if 'class="pager"' not in html:
        return {}
    pager = html.split('class="pager"')[1].split("</")[0:8]
    found = re.findall(r'<a href="(\?[^"]*)"[^>]*>([^<]*)', "</".join(pager))
    return {text.strip(" «»←→"): href.replace("&amp;", "&") for href, text in found}


def walk(client, base: str, start: str, direction: str, between=lambda: None) -> list[int]:
    """Every row met following `direction` ("Older" or "Newer") links from `start`."""
    seen: list[int] = []
    url = base + start
    for _ in range(100):
        html = client.get(url).content.decode()
        seen += row_ids(html, base)
        between()
        step = pager_links(html).get(direction)
        if not step:
            return seen
        url = base + step
    raise AssertionError("the pages never ended")


def queue_one(subject: str = "Arrived meanwhile") -> None:
    queue(1, prefix=subject)


def test_paging_older_visits_every_message_once_while_mail_arrives(admin_client):
    queue(120)
    # Several of them in the same instant: the id breaks the tie.
    same = timezone.now()
    OutboundEmail.objects.filter(
        pk__in=list(OutboundEmail.objects.values_list("pk", flat=True)[40:70])
    ).update(created_at=same)
    before = set(OutboundEmail.objects.values_list("pk", flat=True))
    seen = walk(admin_client, OUTBOX, "", "Older", between=queue_one)
    assert len(seen) == len(set(seen)), "a message was shown twice"
    assert set(seen) == before  # arrivals come on top, never into the pages behind
    newest_first = list(OutboundEmail.objects.filter(pk__in=before).values_list("pk", flat=True))
    assert seen == newest_first


def test_paging_newer_from_the_oldest_page_visits_every_message_once(admin_client):
    queue(130)
    first = admin_client.get(OUTBOX).content.decode()
    oldest = pager_links(first)["Oldest"]
    page = admin_client.get(OUTBOX + oldest).content.decode()
    oldest_ids = list(
        OutboundEmail.objects.order_by("created_at", "id").values_list("pk", flat=True)
    )
    assert row_ids(page, OUTBOX) == oldest_ids[:50][::-1]  # the 50 oldest, newest first
    assert "Older" not in pager_links(page) and "Oldest" not in pager_links(page)
    before = set(oldest_ids)
    seen = walk(admin_client, OUTBOX, oldest, "Newer", between=queue_one)
    assert len(seen) == len(set(seen)), "a message was shown twice"
    assert before <= set(seen)


def test_a_bad_cursor_gives_the_newest_page(admin_client):
    queue(60)
    newest = row_ids(admin_client.get(OUTBOX).content.decode(), OUTBOX)
    for query in (
        "?older=yesterday",
        "?older=99999999999999999999999_1",
        "?newer=-1_x",
        "?older=1_",
        "?newer=_5",
        "?page=abc",
        "?older=-99999999999999999_3",
        "?older=1_²",
        "?newer=١٢_3",
        "?older=1765000000000000_99999999999999999999999999",
    ):
        response = admin_client.get(OUTBOX + query)
        assert response.status_code == 200, query
        assert row_ids(response.content.decode(), OUTBOX) == newest, query
    assert admin_client.get(EVENTS + "?older=nonsense").status_code == 200


def test_status_category_and_search_keep_each_other_in_the_links(admin_client):
    queue(60, recipients=("bob@example.com",))
    html = admin_client.get(OUTBOX, {"status": "queued", "q": "bob@example.com"}).content.decode()
    older = pager_links(html)["Older"]
    assert "status=queued" in older and "q=bob%40example.com" in older
    assert "status=queued" in pager_links(html)["Oldest"]
    tabs = html.split('aria-label="Status"')[1].split("</nav>")[0]
    assert "q=bob%40example.com" in tabs
    html = admin_client.get(OUTBOX, {"category": "other", "q": "bob"}).content.decode()
    tabs = html.split('aria-label="Status"')[1].split("</nav>")[0]
    assert "category=other" in tabs and "q=bob" in tabs


def test_search_by_address_domain_start_and_message_id(admin_client):
    queue(2, recipients=("Carol.Jones@Example.org",), prefix="To Carol")
    queue(1, recipients=("dave@elsewhere.example", "ops@example.org"), prefix="To Dave")
    queue(1, recipients=("erin@other.example",), prefix="To Erin")
    erin = OutboundEmail.objects.get(subject="To Erin 0")

    def found(q: str) -> set[str]:
        html = admin_client.get(OUTBOX, {"q": q}).content.decode()
        table = html.split('<table class="list')[1]
        return set(re.findall(r">(To \w+ \d)<", table))

    assert found("carol.jones@example.org") == {"To Carol 0", "To Carol 1"}  # any case
    assert found("CAROL.JONES@EXAMPLE.ORG") == {"To Carol 0", "To Carol 1"}
    assert found("@example.org") == {"To Carol 0", "To Carol 1", "To Dave 0"}
    assert found("car") == {"To Carol 0", "To Carol 1"}  # the start of an address
    assert found("dave@") == {"To Dave 0"}
    assert found(erin.message_id) == {"To Erin 0"}
    assert found("nobody@nowhere.example") == set()
    html = admin_client.get(OUTBOX, {"q": "nobody@nowhere.example"}).content.decode()
    assert "No e-mail matches" in html
    assert "domain" in html.lower() and "message-id" in html.lower()  # says what it matches


def test_filters_give_the_right_rows(admin_client):
    queue(3, prefix="Waiting")
    queue(2, prefix="Stopped")
    OutboundEmail.objects.filter(subject__startswith="Stopped").update(status=Status.CANCELLED)
    OutboundEmail.objects.filter(subject="Waiting 0").update(category="invitation")
    html = admin_client.get(OUTBOX, {"status": "cancelled"}).content.decode()
    assert len(row_ids(html, OUTBOX)) == 2 and "Waiting" not in html.split("<table")[1]
    html = admin_client.get(OUTBOX, {"category": "invitation"}).content.decode()
    assert len(row_ids(html, OUTBOX)) == 1
    html = admin_client.get(OUTBOX, {"category": "invitation", "status": "cancelled"}).content
    assert row_ids(html.decode(), OUTBOX) == []


def make_events(count: int, event_type: str = "api.deployed") -> None:
    Event.objects.bulk_create(
        Event(type=event_type, source=EventSource.API, payload={}) for _ in range(count)
    )


def test_events_pages_visit_every_event_once_and_filter_by_type(admin_client):
    make_events(70)
    make_events(55, "user.invited")
    before = set(Event.objects.values_list("pk", flat=True))
    seen = walk(admin_client, EVENTS, "", "Older", between=lambda: make_events(2))
    assert len(seen) == len(set(seen)) and set(seen) == before
    html = admin_client.get(EVENTS, {"type": "user.invited"}).content.decode()
    invited = set(Event.objects.filter(type="user.invited").values_list("pk", flat=True))
    assert set(row_ids(html, EVENTS)) <= invited and len(row_ids(html, EVENTS)) == 50
    assert "type=user.invited" in pager_links(html)["Older"]
    typed = walk(admin_client, EVENTS, "?type=user.invited", "Older")
    assert set(typed) == invited and len(typed) == len(invited)


# -- flat: the same number of queries and the same work at any size ---------------------------


def fill(shapes: bench.Shapes, outbox: int) -> None:
    """The bench's shapes (every table the outbox writes), then fresh statistics. A bulk send
    every 500 messages: the Bulk sends box shows the newest 5 at either size."""
    bench.BATCH_EVERY = 500
    bench.grow(shapes, bench.Sizes(outbox, outbox, outbox // 5, 0), vacuum=False)


def urls(client) -> list[str]:
    first = pager_links(client.get(OUTBOX).content.decode())
    events = pager_links(client.get(EVENTS).content.decode())
    return [
        OUTBOX,
        OUTBOX + first.get("Older", "?page=2"),
        OUTBOX + first.get("Oldest", "?page=last"),
        *[f"{OUTBOX}?status={s}" for s in Status.values],
        f"{OUTBOX}?category=invitation",
        f"{OUTBOX}?category=test",
        # Rare terms (60 messages at either size: a full page), common ones, no match.
        f"{OUTBOX}?q=carol%40rare.example",
        f"{OUTBOX}?q=%40rare.example",
        f"{OUTBOX}?q=carol",
        f"{OUTBOX}?q=oncall",
        f"{OUTBOX}?q=%40acme.example",
        f"{OUTBOX}?q=nobody%40nowhere.example",
        EVENTS,
        EVENTS + events.get("Older", "?page=2"),
        EVENTS + events.get("Oldest", "?page=last"),
        f"{EVENTS}?type=user.invited",
        f"{EVENTS}?type=api.retired",
    ]


@contextmanager
def sqlite_steps() -> Iterator[list[int]]:
    """Counts SQLite's virtual-machine instructions (in thousands) while the block runs."""
    counted = [0]

    def tick() -> int:
        counted[0] += 1
        return 0

    connection.connection.set_progress_handler(tick, 1000)
    try:
        yield counted
    finally:
        connection.connection.set_progress_handler(None, 0)


def rows_read(plan: dict) -> int:
    """Rows the plan's scans read from tables, kept or filtered out, over all their loops. A
    sequential scan counts every row of its table; an index scan only what it visits."""
    loops = plan.get("Actual Loops", 1)
    read = 0
    if "Relation Name" in plan:
        visited = plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
        read = round((visited + plan.get("Rows Removed by Index Recheck", 0)) * loops)
    return read + sum(rows_read(child) for child in plan.get("Plans", []))


def work(client, url: str) -> tuple[int, int]:
    """(queries, work) for one request: work is the rows read from tables on PostgreSQL
    (EXPLAIN ANALYZE of every SELECT the view ran), thousands of VM steps on SQLite."""
    client.get(url)  # warm caches: sessions, content types
    if connection.vendor == "sqlite":
        with CaptureQueriesContext(connection) as captured, sqlite_steps() as steps:
            assert client.get(url).status_code == 200
        return len(captured), steps[0]
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    rows = 0
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            if query["sql"].lstrip()[:6].upper() != "SELECT":
                continue
            cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query["sql"])
            plan = cursor.fetchone()[0]
            rows += rows_read((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    return len(captured), rows


def test_list_views_do_the_same_work_at_four_times_the_rows(admin_client, settings, monkeypatch):
    # A search term is common past this many recipients: "oncall" and "@acme.example" are at
    # either size, the rare ones (60) at neither.
    monkeypatch.setattr(outbox, "FEW", 200)
    # The health banner on every page is computed once per HEALTH_CACHE_SECONDS: not here.
    settings.HEALTH_CACHE_SECONDS = 3600
    # Both sizes past the point where the indexes grow a level (a few hundred rows): what
    # is left to see is whether a view reads the table, or only a page of it.
    queue(60, recipients=("carol@rare.example",), prefix="Rare")
    shapes = bench.Shapes.make()
    fill(shapes, 3000)
    small = {i: work(admin_client, url) for i, url in enumerate(urls(admin_client))}
    fill(shapes, 12000)
    grown = []
    for i, url in enumerate(urls(admin_client)):
        queries, effort = work(admin_client, url)
        before_queries, before_effort = small[i]
        if queries != before_queries or effort > before_effort * 1.5 + 100:
            grown.append(
                f"{url}: {before_queries}->{queries} queries, work {before_effort}->{effort}"
            )
    assert not grown, "\n".join(grown)
