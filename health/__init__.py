"""Delivery health: workers' heartbeats, the console's banner and status page, the probes
(/healthz, /readyz) and the Prometheus metrics (/metrics)."""
