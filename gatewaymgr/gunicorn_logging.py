"""gunicorn's access log without invitation tokens: scripts/run starts gunicorn with
`--logger-class gatewaymgr.gunicorn_logging.RedactingLogger`."""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from gatewaymgr.logredaction import redact


class RedactingLogger(Logger):
    """gunicorn's logger, with the tokens taken out of every access-log field: the request
    line, the path, the query, the Referer and the other headers."""

    def atoms(self, resp: Any, req: Any, environ: dict, request_time: Any) -> dict:
        atoms = super().atoms(resp, req, environ, request_time)
        return {
            key: redact(value) if isinstance(value, str) else value for key, value in atoms.items()
        }
