"""Reading the addresses an administrator pastes into the invitation form, as a pure function.

Accepts one address per line, or several separated by commas or semicolons, each either bare
(`bob@example.com`) or with a name (`Bob Smith <bob@example.com>`, `"Smith, Bob" <bob@…>`), as
mail programs copy them. Every entry that cannot be used is reported with its line, so the
valid ones can still be invited.

Anyone who may invite can paste anything here, so reading is linear in the input (no regular
expression that can backtrack) and capped: entries per submission, characters per entry and
characters in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from django.contrib.auth.base_user import BaseUserManager
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

MAX_ENTRIES = 10_000  # entries read, and so addresses invited, per submission
MAX_NAME_CHARS = 150
MAX_ADDRESS_CHARS = 254
# A name, an address, quotes, brackets and some spaces: anything longer is not one person.
MAX_ENTRY_CHARS = 420
# 10,000 entries of up to 200 characters; below Django's 2.5 MB limit on a request body.
MAX_TOTAL_CHARS = 2_000_000
SHOWN_PROBLEMS = 20  # a page lists this many problems, then says how many more there are
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")  # one character class: linear


@dataclass(frozen=True)
class Invitee:
    email: str  # the domain in lower case; the local part as given
    name: str = ""


@dataclass(frozen=True)
class Problem:
    where: str  # "Line 3", "Argument 2"
    entry: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def split_entries(text: str) -> list[tuple[str, str]]:
    """("Line n", entry) for each non-blank entry, splitting on commas and semicolons
    that are not inside quotes or angle brackets."""
    return list(iter_entries(text))


def iter_entries(text: str) -> Iterator[tuple[str, str]]:
    """split_entries one entry at a time, in one pass over the text."""
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        start, quoted, bracketed = 0, False, False
        for index, char in enumerate(line):
            if char == '"' and not bracketed:
                quoted = not quoted
            elif char == "<" and not quoted:
                bracketed = True
            elif char == ">" and not quoted:
                bracketed = False
            elif char in ",;" and not quoted and not bracketed:
                if entry := line[start:index].strip():
                    yield f"Line {number}", entry
                start = index + 1
        if entry := line[start:].strip():
            yield f"Line {number}", entry


def _name_and_address(entry: str) -> tuple[str, str] | None:
    """("Name", "address") for "Name <address>", None for an entry without brackets; a
    ValidationError for brackets that do not form one pair at the end. String operations
    only, so the time is linear in the entry whatever it holds."""
    if "<" not in entry and ">" not in entry:
        return None
    opening = entry.find("<")
    if entry.count("<") != 1 or entry.count(">") != 1 or not entry.endswith(">"):
        raise ValidationError(f"“{entry}” has unmatched angle brackets; write Name <address>.")
    return entry[:opening].strip().strip('"').strip(), entry[opening + 1 : -1].strip()


def parse_invitee(entry: str) -> Invitee:
    """One entry as an Invitee, or a ValidationError that says what is wrong with it."""
    if len(entry) > MAX_ENTRY_CHARS:
        raise ValidationError(f"it is longer than {MAX_ENTRY_CHARS} characters.")
    if _CONTROL.search(entry):
        raise ValidationError("it contains a line break or another control character.")
    entry = entry.strip()
    name, address = _name_and_address(entry) or ("", entry)
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError(f"the name is longer than {MAX_NAME_CHARS} characters.")
    if not address:
        raise ValidationError(f"“{entry}” has a name but no address.")
    if len(address) > MAX_ADDRESS_CHARS:
        raise ValidationError(f"the address is longer than {MAX_ADDRESS_CHARS} characters.")
    try:
        validate_email(address)
    except ValidationError:
        raise ValidationError(f"“{address}” is not a valid e-mail address.") from None
    return Invitee(BaseUserManager.normalize_email(address), name)


def parse_invitees(text: str) -> tuple[list[Invitee], list[Problem]]:
    """What the form's box holds: the usable invitees and a problem for every other entry.
    A ValidationError, reading nothing further, for a box past the caps."""
    if len(text) > MAX_TOTAL_CHARS:
        raise ValidationError(
            f"The box holds {len(text):,} characters; at most {MAX_TOTAL_CHARS:,} can be read "
            "at once. Nobody was invited: split the list and invite it in parts."
        )
    entries = list(islice(iter_entries(text), MAX_ENTRIES + 1))
    if len(entries) > MAX_ENTRIES:
        raise ValidationError(
            f"More than {MAX_ENTRIES:,} entries; at most {MAX_ENTRIES:,} can be read at once. "
            "Nobody was invited: split the list and invite it in parts."
        )
    return parse_entries(entries)


def first_problems(problems: list[str], shown: int = SHOWN_PROBLEMS) -> list[str]:
    """The first `shown` problems and a last line saying how many more there are, so that a
    box of junk gives a page of bounded size; the entries themselves stay in the box."""
    if len(problems) <= shown:
        return problems
    return [*problems[:shown], f"… and {len(problems) - shown:,} more, left in the box below."]


def parse_entries(entries: Iterable[tuple[str, str]]) -> tuple[list[Invitee], list[Problem]]:
    """The usable invitees (each address once) and a problem for every other entry."""
    invitees: dict[str, Invitee] = {}
    problems: list[Problem] = []
    for where, entry in entries:
        try:
            invitee = parse_invitee(entry)
        except ValidationError as error:
            problems.append(Problem(where, entry, error.messages[0]))
            continue
        invitees.setdefault(invitee.email.lower(), invitee)
    return list(invitees.values()), problems
