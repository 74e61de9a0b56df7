"""Keyset pages for the long lists (Outbox, Events): newest first, by (created_at, id).

A page is found from the row next to it, never by counting rows (OFFSET reads and throws away
every row before the page), so every page costs the same whether the table holds a thousand
rows or a million, and paging on while rows arrive visits each row exactly once. The oldest
page is the newest page of the list read the other way round.

The URL names where a page starts with one of (at most one is used):
    ?older=<cursor>   the rows older than that row (the "Older" link)
    ?newer=<cursor>   the rows newer than that row (the "Newer" link)
    ?oldest=1         the oldest rows
A cursor is "<microseconds since 1970>_<id>"; one that does not parse gives the newest page.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from django.db.models import Model, Q, QuerySet

PAGE_SIZE = 50
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)
BIGGEST_ID = 2**63 - 1


@dataclass(frozen=True)
class Cursor:
    created_at: datetime.datetime
    id: int

    def __str__(self) -> str:
        return f"{(self.created_at - EPOCH) // MICROSECOND}_{self.id}"

    @classmethod
    def of(cls, row: Model) -> Cursor:
        return cls(row.created_at, row.pk)

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor in a URL, or None for anything that is not one."""
        micros, _, pk = text.partition("_")
        digits = micros.lstrip("-") + pk
        if not (digits.isascii() and micros.lstrip("-").isdigit() and pk.isdigit()):
            return None
        if int(pk) > BIGGEST_ID:  # past what the databases' id columns hold
            return None
        try:
            return cls(EPOCH + int(micros) * MICROSECOND, int(pk))
        except (OverflowError, ValueError):  # a time no datetime holds
            return None


@dataclass(frozen=True)
class Request:
    """Which page the URL asks for: the direction and the row it starts from."""

    direction: str  # "newest", "older", "newer" or "oldest"
    cursor: Cursor | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Request:
        if query.get("oldest"):
            return cls("oldest")
        for direction in ("older", "newer"):
            cursor = Cursor.parse(query.get(direction, ""))
            if cursor is not None:
                return cls(direction, cursor)
        return cls("newest")


def older_than(cursor: Cursor) -> Q:
    # created_at <= c bounds the index range; the OR only sorts out rows of that very instant.
    return Q(created_at__lte=cursor.created_at) & (
        Q(created_at__lt=cursor.created_at) | Q(id__lt=cursor.id)
    )


def newer_than(cursor: Cursor) -> Q:
    return Q(created_at__gte=cursor.created_at) & (
        Q(created_at__gt=cursor.created_at) | Q(id__gt=cursor.id)
    )


class Source(Protocol):
    """Where a list's rows come from, in order: a page asks for at most `limit` rows past a
    cursor (None: from the newest, or from the oldest)."""

    def newest_first(self, older_than: Cursor | None, limit: int) -> list: ...

    def oldest_first(self, newer_than: Cursor | None, limit: int) -> list: ...


@dataclass(frozen=True)
class ByTime:
    """A queryset, newest first by (created_at, id): the lists' own order and indexes."""

    rows: QuerySet

    def newest_first(self, older: Cursor | None, limit: int) -> list:
        rows = self.rows.order_by("-created_at", "-id")
        return list((rows.filter(older_than(older)) if older else rows)[:limit])

    def oldest_first(self, newer: Cursor | None, limit: int) -> list:
        rows = self.rows.order_by("created_at", "id")
        return list((rows.filter(newer_than(newer)) if newer else rows)[:limit])


@dataclass(frozen=True)
class ById:
    """Rows found through another table in id order (the Outbox search, through its recipient
    index): `ids(newest_first, beyond_id, limit)` gives the ids, `rows` the rows to show.
    Newest is the highest id; the cursor's time is not used."""

    ids: Callable[[bool, int | None, int], list[int]]
    rows: QuerySet

    def _load(self, ids: list[int]) -> list:
        found = self.rows.in_bulk(ids)
        return [found[pk] for pk in ids if pk in found]

    def newest_first(self, older: Cursor | None, limit: int) -> list:
        return self._load(self.ids(True, older.id if older else None, limit))

    def oldest_first(self, newer: Cursor | None, limit: int) -> list:
        return self._load(self.ids(False, newer.id if newer else None, limit))


@dataclass
class Page:
    """One page of rows, newest first, and where the links around it lead."""

    rows: list
    newer: Cursor | None  # the first row, when there are newer rows to go to
    older: Cursor | None  # the last row, when there are older rows to go to
    is_newest: bool  # nothing newer: no "Newest" link
    is_oldest: bool  # nothing older: no "Oldest" link
    params: dict[str, str]  # the list's other query parameters (filters, search)

    keyset = True  # tells includes/pager.html which kind of page this is

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def has_other_pages(self) -> bool:
        return not (self.is_newest and self.is_oldest)

    def _url(self, **where: str) -> str:
        return "?" + urlencode({**self.params, **where})

    @property
    def newest_url(self) -> str:
        return self._url()

    @property
    def newer_url(self) -> str:
        return self._url(newer=str(self.newer))

    @property
    def older_url(self) -> str:
        return self._url(older=str(self.older))

    @property
    def oldest_url(self) -> str:
        return self._url(oldest="1")


def page(
    rows: QuerySet | Source,
    query: Mapping[str, str],
    size: int = PAGE_SIZE,
    keep: tuple[str, ...] = (),
) -> Page:
    """The page of `rows` (a queryset, listed by time, or a Source) the URL's query asks for.
    `keep` names the query parameters the links carry on (the filters and the search)."""
    source = ByTime(rows) if isinstance(rows, QuerySet) else rows
    params = {name: query[name] for name in keep if query.get(name)}
    asked = Request.from_query(query)
    if asked.direction == "older":
        found = source.newest_first(asked.cursor, size + 1)
        return _page(found[:size], more_newer=True, more_older=len(found) > size, params=params)
    if asked.direction == "newer":
        # Fewer than a page of newer rows makes a short newest page: filling it up with older
        # rows would show again rows the reader has just seen.
        found = source.oldest_first(asked.cursor, size + 1)
        more_newer = len(found) > size
        return _page(found[:size][::-1], more_newer=more_newer, more_older=True, params=params)
    if asked.direction == "oldest":
        found = source.oldest_first(None, size + 1)
        more_newer = len(found) > size
        return _page(found[:size][::-1], more_newer=more_newer, more_older=False, params=params)
    found = source.newest_first(None, size + 1)
    return _page(found[:size], more_newer=False, more_older=len(found) > size, params=params)


def _page(rows: list, *, more_newer: bool, more_older: bool, params: dict[str, str]) -> Page:
    return Page(
        rows=rows,
        newer=Cursor.of(rows[0]) if rows and more_newer else None,
        older=Cursor.of(rows[-1]) if rows and more_older else None,
        is_newest=not more_newer,
        is_oldest=not more_older,
        params=params,
    )
