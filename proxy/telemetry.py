"""Request counts and latencies for Prometheus, at `GET /metrics` (prometheus_client).

Under gunicorn every worker is its own process. `cityseg-proxy` points
`PROMETHEUS_MULTIPROC_DIR` at a fresh folder before any worker starts (prometheus_client's
multi-process mode: each process writes its figures to files there), and `/metrics` adds up the
files of all workers, whichever worker answers the scrape. Without that variable (the Flask
development server, tests, a WSGI server that does not set it) the figures are this process's.

Label values come from closed sets only, so a client can neither add series at will nor write
into the exposition: the route *template* (never the raw path: ids would be a series each),
`unmatched` when no route matched, a standard HTTP method or `other`, and the status code the
app answered.
"""
from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

# Upper bounds (seconds) of the latency histogram: a listing takes ~1 ms, a full-resolution
# prediction on CPU up to seconds.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# RFC 9110's methods and PATCH; any other token a client sends is counted as `other`.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                           "TRACE", "PATCH"})
OTHER_LABEL = "other"
UNMATCHED_ROUTE = "unmatched"


class RequestMetrics:
    """Requests by (method, route, status) and latency by route, in one app's registry."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter("cityseg_proxy_requests",
                                 "HTTP requests handled, by method, route and status.",
                                 ("method", "route", "status"), registry=self.registry)
        self._duration = Histogram("cityseg_proxy_request_duration_seconds",
                                   "Time to answer, by route.", ("route",), buckets=BUCKETS_S,
                                   registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Records one finished request (`route`: a route template of the app)."""
        method = method if method in KNOWN_METHODS else OTHER_LABEL
        self._requests.labels(method, route, str(status)).inc()
        self._duration.labels(route).observe(seconds)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type): every worker's figures in multi-process mode, else this one's."""
        registry = self.registry
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type


def install_metrics(app: Flask) -> RequestMetrics:
    """Times every request and serves the figures at `GET /metrics`."""
    metrics = RequestMetrics()

    @app.before_request
    def start_timer():
        g.cityseg_started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        started = g.pop("cityseg_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule else UNMATCHED_ROUTE
            metrics.observe(request.method, route, response.status_code,
                            time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return Response(body, content_type=content_type)

    return metrics
