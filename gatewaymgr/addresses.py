"""Reading the addresses an administrator pastes into the invitation form, as a pure function.

Accepts one address per line, or several separated by commas or semicolons, each either bare
(`bob@example.com`) or with a name (`Bob Smith <bob@example.com>`, `"Smith, Bob" <bob@…>`), as
mail programs copy them. Every entry that cannot be used is reported with its line, so the
valid ones can still be invited.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth.base_user import BaseUserManager
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

MAX_ADDRESSES = 1000
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_NAMED = re.compile(r"(?P<name>[^<>]*?)\s*<(?P<address>[^<>]*)>")


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
    entries = []
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), start=1):
        current, quoted, bracketed = [], False, False
        for char in line:
            if char == '"' and not bracketed:
                quoted = not quoted
            elif char == "<" and not quoted:
                bracketed = True
            elif char == ">" and not quoted:
                bracketed = False
            elif char in ",;" and not quoted and not bracketed:
                entries.append((number, "".join(current)))
                current = []
                continue
            current.append(char)
        entries.append((number, "".join(current)))
    return [(f"Line {number}", entry.strip()) for number, entry in entries if entry.strip()]


def parse_invitee(entry: str) -> Invitee:
    """One entry as an Invitee, or a ValidationError that says what is wrong with it."""
    if _CONTROL.search(entry):
        raise ValidationError("it contains a line break or another control character.")
    named = _NAMED.fullmatch(entry)
    if named:
        name = named["name"].strip().strip('"').strip()
        address = named["address"].strip()
    elif "<" in entry or ">" in entry:
        raise ValidationError(f"“{entry}” has unmatched angle brackets; write Name <address>.")
    else:
        name, address = "", entry
    if len(name) > 150:
        raise ValidationError("the name is longer than 150 characters.")
    if not address:
        raise ValidationError(f"“{entry}” has a name but no address.")
    if len(address) > 254:
        raise ValidationError("the address is longer than 254 characters.")
    try:
        validate_email(address)
    except ValidationError:
        raise ValidationError(f"“{address}” is not a valid e-mail address.") from None
    return Invitee(BaseUserManager.normalize_email(address), name)


def parse_invitees(text: str) -> tuple[list[Invitee], list[Problem]]:
    """What the form's box holds: the usable invitees and a problem for every other entry."""
    return parse_entries(split_entries(text))


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
        key = invitee.email.lower()
        if key not in invitees and len(invitees) >= MAX_ADDRESSES:
            problems.append(
                Problem(
                    where, entry, f"at most {MAX_ADDRESSES:,} addresses can be invited at once."
                )
            )
            continue
        invitees.setdefault(key, invitee)
    return list(invitees.values()), problems
