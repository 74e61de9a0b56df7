"""The "Options (json)" field: strict parsing into an immutable, typed object.

Every key of the design's option table is known here, with its type and default. A key
that is not known, or a value of the wrong type, is an error naming the key: a typo such as
``verfy_peer`` must never be ignored, because ignoring it silently keeps the default.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gatewaymgr.untrusted import UnsafeJson, load_json

from .hostnames import InvalidHost, normalize_host, parse_ip

# The options object needs a few hundred characters; anything far larger is a wrong paste.
MAX_OPTIONS_CHARS = 10_000
# A flat object: deeper nesting is never valid, and past a few levels it is an attack on the
# parser (Python's json recurses), so it is refused before parsing.
MAX_OPTIONS_DEPTH = 5

# Sane ranges for the numeric options: (lowest, highest, unit). Each default lies inside.
BOUNDS: dict[str, tuple[int, int, str]] = {
    "restart_threshold": (0, 100_000, "messages"),
    "restart_threshold_sleep": (0, 600, "seconds"),
    "ping_threshold": (0, 86_400, "seconds"),
    "timeout": (1, 600, "seconds"),
    "max_per_second": (0, 10_000, "messages per second"),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_FINGERPRINT_ALGORITHMS = {64: "sha256", 40: "sha1", 32: "md5"}


class OptionsError(ValueError):
    """The options are invalid. `messages` holds one sentence per problem."""

    def __init__(self, messages: list[str]):
        super().__init__(" ".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class Fingerprint:
    algorithm: str  # "sha256", "sha1" or "md5", chosen by the length of the value
    hexdigest: str  # lower case, no colons

    def __str__(self) -> str:
        pairs = ":".join(self.hexdigest[i : i + 2] for i in range(0, len(self.hexdigest), 2))
        return f"{self.algorithm.upper().replace('SHA', 'SHA-')} {pairs.upper()}"


@dataclass(frozen=True)
class SmtpOptions:
    verify_peer: bool = True
    peer_fingerprint: Fingerprint | None = None
    local_domain: str | None = None
    restart_threshold: int = 100
    restart_threshold_sleep: float = 0
    ping_threshold: float = 100
    timeout: float = 30
    source_ip: str | None = None
    max_per_second: float = 0
    auto_tls: bool = True
    require_tls: bool = False


class _Invalid(ValueError):
    pass


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "…"


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Invalid(
        'must be true or false (the strings "true", "false", "yes", "no", "on", "off", '
        f'"1" and "0" work too), not {_show(value)}'
    )


def _whole(value: Any, key: str) -> int:
    low, high, unit = BOUNDS[key]
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    if not ok:
        raise _Invalid(
            f"must be a whole number, {low} or more, at most {high} ({unit}), not {_show(value)}"
        )
    return value


def _number(value: Any, key: str) -> float:
    low, high, unit = BOUNDS[key]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (is_number and math.isfinite(value) and low <= value <= high):
        raise _Invalid(f"must be a number from {low} to {high} ({unit}), not {_show(value)}")
    return value


def _fingerprint(value: Any) -> Fingerprint | None:
    if value is None:
        return None
    if isinstance(value, str):
        digits = value.replace(":", "").replace(" ", "").lower()
        algorithm = _FINGERPRINT_ALGORITHMS.get(len(digits))
        if algorithm and all(c in "0123456789abcdef" for c in digits):
            return Fingerprint(algorithm, digits)
    raise _Invalid(
        "must be the certificate's SHA-256 fingerprint: 64 hexadecimal digits, colons "
        "allowed (SHA-1 with 40 digits and MD5 with 32 are accepted too)"
    )


def _local_domain(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return normalize_host(value, what="local domain")
        except InvalidHost as error:
            raise _Invalid(f"must be a host name or IP address: {error}") from None
    raise _Invalid(f"must be a host name or IP address as a string, not {_show(value)}")


def _source_ip(value: Any) -> str | None:
    if value is None:
        return None
    address = parse_ip(value) if isinstance(value, str) else None
    if address is None:
        raise _Invalid(
            f"must be an IP address of this machine, such as 192.0.2.10, not {_show(value)}"
        )
    return address.compressed


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "verify_peer": _boolean,
    "peer_fingerprint": _fingerprint,
    "local_domain": _local_domain,
    "restart_threshold": lambda v: _whole(v, "restart_threshold"),
    "restart_threshold_sleep": lambda v: _number(v, "restart_threshold_sleep"),
    "ping_threshold": lambda v: _number(v, "ping_threshold"),
    "timeout": lambda v: _number(v, "timeout"),
    "source_ip": _source_ip,
    "max_per_second": lambda v: _number(v, "max_per_second"),
    "auto_tls": _boolean,
    "require_tls": _boolean,
}
OPTION_NAMES = tuple(f.name for f in fields(SmtpOptions))
assert set(OPTION_NAMES) == set(_CONVERTERS)
assert all(low <= getattr(SmtpOptions(), key) <= high for key, (low, high, _) in BOUNDS.items())


def decode_options_json(text: str) -> dict[str, Any]:
    """The JSON object written in the Options field; blank means no options."""
    if len(text) > MAX_OPTIONS_CHARS:
        raise OptionsError(
            [
                f"The options are {len(text):,} characters long; the limit is "
                f"{MAX_OPTIONS_CHARS:,}. Options are a short JSON object such as "
                '{"verify_peer": false}.'
            ]
        )
    if not text.strip():
        return {}
    try:
        value = load_json(text, max_depth=MAX_OPTIONS_DEPTH)
    except UnsafeJson as error:
        raise OptionsError([f"The options JSON {error}."]) from None
    except json.JSONDecodeError as error:
        raise OptionsError(
            [
                f"The options are not valid JSON: {error.msg} at line {error.lineno}, "
                f'column {error.colno}. Example: {{"verify_peer": false}}.'
            ]
        ) from None
    return _require_object(value)


def _require_object(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
    raise OptionsError(
        [f'The options must be a JSON object such as {{"verify_peer": false}}, not {kind}.']
    )


def parse_options(raw: Mapping[str, Any] | str | None) -> SmtpOptions:
    """Parse options given as JSON text or as an already decoded object."""
    if raw is None:
        return SmtpOptions()
    values = decode_options_json(raw) if isinstance(raw, str) else _require_object(raw)
    errors: list[str] = []
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        converter = _CONVERTERS.get(key)
        if converter is None:
            errors.append(_unknown_key_message(key))
            continue
        try:
            parsed[key] = converter(value)
        except _Invalid as error:
            errors.append(f"{key} {error}.")
    if not errors and parsed.get("require_tls") and parsed.get("auto_tls") is False:
        errors.append(
            "require_tls: true and auto_tls: false contradict each other: remove one of them."
        )
    if errors:
        raise OptionsError(errors)
    return SmtpOptions(**parsed)


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(str(key), OPTION_NAMES, n=1, cutoff=0.6)
    if close:
        return f'Unknown option "{key}". Did you mean "{close[0]}"?'
    return f'Unknown option "{key}". Valid options are: {", ".join(OPTION_NAMES)}.'
