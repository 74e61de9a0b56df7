"""Text from outside, made safe: JSON parsed within bounds, and foreign text made printable.

Pure functions, shared by the HTTP API, the Options field and everything that shows what an
SMTP server said. Python's json module fails on hostile input in ways no caller expects: deep
nesting raises RecursionError, an integer of more than 4,300 digits raises a ValueError about
sys.set_int_max_str_digits(), and NaN or Infinity are accepted although JSON has neither.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from typing import Any, TypeVar

Record = TypeVar("Record")

MAX_NUMBER_DIGITS = 40  # more than any real value needs (2**64 has 20 digits)

# A JSON string (terminated or not: an unterminated one runs to the end) or a bracket.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
PLACEHOLDER = "\ufffd"  # the replacement character: visibly "something was removed here"


class UnsafeJson(ValueError):
    """JSON that is refused before or while parsing; the text completes "The body ..."."""


def nesting_depth(text: str) -> int:
    """How deeply arrays and objects nest in `text`, in one linear pass that skips strings."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _check_digits(token: str) -> str:
    digits = sum(char.isdigit() for char in token)
    if digits > MAX_NUMBER_DIGITS:
        raise UnsafeJson(
            f"contains a number with {digits:,} digits; at most {MAX_NUMBER_DIGITS} are allowed"
        )
    return token


def _refuse_constant(name: str) -> Any:
    raise UnsafeJson(f"contains {name}, which is not a JSON number")


def load_json(text: str, *, max_depth: int) -> Any:
    """Parse `text` as strict JSON. Raises UnsafeJson when it nests deeper than `max_depth`,
    has a number of more than MAX_NUMBER_DIGITS digits, or NaN/Infinity; json.JSONDecodeError
    when it is not JSON."""
    depth = nesting_depth(text)
    if depth > max_depth:
        raise UnsafeJson(f"is nested {depth:,} levels deep; at most {max_depth} are allowed")
    return json.loads(
        text,
        parse_int=lambda token: int(_check_digits(token)),
        parse_float=lambda token: float(_check_digits(token)),
        parse_constant=_refuse_constant,
    )


def printable(text: str) -> str:
    """`text` from a foreign party (an SMTP server's reply, a certificate's subject) made safe
    to show on a terminal or a page: terminal escape sequences and control or format
    characters become U+FFFD, line breaks and tabs a space. Ordinary text is untouched.

    Replacing ESC and the C1 controls (CSI, OSC ...) is enough: what follows them is inert
    text, and it stays visible, so a reader sees what the server tried."""
    if text.isprintable():
        return text
    return "".join(_printable_char(char) for char in text)


def _printable_char(char: str) -> str:
    if char.isprintable():
        return char
    if char in "\t\n\r\v\f" or unicodedata.category(char) == "Zs":
        return " "
    return PLACEHOLDER


def printable_record(record: Record) -> Record:
    """A copy of the dataclass `record` (a certificate's description) with every text field,
    and every text in a tuple field, made printable."""
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if isinstance(value, str):
            changes[field.name] = printable(value)
        elif isinstance(value, tuple) and all(isinstance(item, str) for item in value):
            changes[field.name] = tuple(printable(item) for item in value)
    return dataclasses.replace(record, **changes)
