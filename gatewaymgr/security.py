"""Response headers that Django does not send on its own: Content-Security-Policy on every
response, and Strict-Transport-Security whenever PUBLIC_URL is https."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def hsts_value(seconds: int, include_subdomains: bool, preload: bool) -> str:
    return "; ".join(
        [f"max-age={seconds}"]
        + (["includeSubDomains"] if include_subdomains else [])
        + (["preload"] if preload else [])
    )


class SecurityHeadersMiddleware:
    """Adds the policy headers to every response that does not set its own.

    Django's SecurityMiddleware sends HSTS only when the request itself arrived over https,
    which behind a TLS-terminating proxy it cannot tell without SECURE_PROXY_SSL_HEADER (and
    trusting that header is only safe when the proxy always sets it). PUBLIC_URL already says
    users reach the console over https, and browsers ignore HSTS received over plain http, so
    it is sent whenever SECURE_HSTS_SECONDS is set.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.csp = settings.CONTENT_SECURITY_POLICY
        seconds = getattr(settings, "SECURE_HSTS_SECONDS", 0)
        self.hsts = (
            hsts_value(
                seconds, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS, settings.SECURE_HSTS_PRELOAD
            )
            if seconds
            else None
        )

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.csp)
        if self.hsts:
            response.headers.setdefault("Strict-Transport-Security", self.hsts)
        return response
