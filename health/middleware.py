"""The probes and /metrics answer before anything else looks at the request.

A load balancer or Kubernetes asks /healthz and /readyz by the machine's or the pod's address,
which is not in ALLOWED_HOSTS; Prometheus scrapes /metrics the same way. These answers build
no URL from the Host header and set no cookie, so the Host check (which would answer 400),
sessions, sign-in and rate limits are skipped for exactly these three paths.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from . import views

PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": views.healthz,
    "/readyz": views.readyz,
    "/metrics": views.metrics,
}


class ProbeMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is not None:
            return probe(request)
        return self.get_response(request)
