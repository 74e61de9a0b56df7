"""PUBLIC_URL when only BIND is set: the address users reach the console at, for links in
e-mails (invitations, notifications)."""

from __future__ import annotations

DEFAULT_BIND = "127.0.0.1:8000"
WILDCARDS = {"", "0.0.0.0", "::", "[::]", "*"}


def public_url(given: str, bind: str) -> tuple[str, str]:
    """(PUBLIC_URL, a warning or ""). PUBLIC_URL wins when set. Otherwise the URL follows
    BIND when BIND names one address; when it listens on every address (or a Unix socket) no
    name for this machine can be derived, so the links say 127.0.0.1 and the warning says to
    set PUBLIC_URL."""
    if given:
        return given.rstrip("/"), ""
    bind = bind.strip() or DEFAULT_BIND
    if bind.startswith(("unix:", "fd://")):
        url = f"http://{DEFAULT_BIND}"
        return url, _warning(bind, url)
    host, _, port = bind.rpartition(":")
    if not host:  # a port alone, as gunicorn also accepts
        host, port = "", bind
    port = port or "8000"
    if host in WILDCARDS:
        url = f"http://127.0.0.1:{port}"
        return url, _warning(bind, url)
    return f"http://{host}:{port}", ""


def _warning(bind: str, url: str) -> str:
    return (
        f"BIND is {bind} but PUBLIC_URL is not set: links in e-mails (invitations, "
        f"notifications) point to {url}, which only this machine can open. Set PUBLIC_URL to "
        "the address users reach the console at, e.g. PUBLIC_URL=https://gateway.example.com."
    )
