"""Request counts and latencies in the Prometheus text format, at `GET /metrics`.

A few dozen lines instead of a `prometheus_client` dependency. The figures are per process:
behind gunicorn each worker keeps its own, which is what a scrape of one worker shows.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict

from flask import Flask, Response, g, request

# Upper bounds (seconds) of the latency histogram: a listing takes ~1 ms, a full-resolution
# prediction on CPU up to seconds.
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestMetrics:
    """Thread-safe counters: requests by (method, route, status); latency by route."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Records one finished request."""
        with self._lock:
            self._requests[(method, route, status)] += 1
            counts = self._buckets.setdefault(route, [0] * (len(BUCKETS_S) + 1))
            for i, bound in enumerate(BUCKETS_S):
                if seconds <= bound:
                    counts[i] += 1
            counts[-1] += 1  # +Inf, which is also the count
            self._sums[route] += seconds

    def exposition(self) -> str:
        """The metrics in Prometheus' text exposition format 0.0.4."""
        lines = [
            "# HELP cityseg_proxy_requests_total HTTP requests handled, by route and status.",
            "# TYPE cityseg_proxy_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), count in sorted(self._requests.items()):
                lines.append(f'cityseg_proxy_requests_total{{method="{method}",'
                             f'route="{_escape(route)}",status="{status}"}} {count}')
            lines += [
                "# HELP cityseg_proxy_request_duration_seconds Time to answer, by route.",
                "# TYPE cityseg_proxy_request_duration_seconds histogram",
            ]
            for route, counts in sorted(self._buckets.items()):
                label = f'route="{_escape(route)}"'
                for bound, count in zip(BUCKETS_S, counts):
                    lines.append(f'cityseg_proxy_request_duration_seconds_bucket'
                                 f'{{{label},le="{bound:g}"}} {count}')
                lines.append(f'cityseg_proxy_request_duration_seconds_bucket'
                             f'{{{label},le="+Inf"}} {counts[-1]}')
                lines.append(f"cityseg_proxy_request_duration_seconds_sum{{{label}}} "
                             f"{self._sums[route]:.6f}")
                lines.append(f"cityseg_proxy_request_duration_seconds_count{{{label}}} "
                             f"{counts[-1]}")
        return "\n".join(lines) + "\n"


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
            # The route template, never the raw path: ids must not explode label cardinality.
            route = request.url_rule.rule if request.url_rule else "unmatched"
            metrics.observe(request.method, route, response.status_code,
                            time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.exposition(), content_type=CONTENT_TYPE)

    return metrics


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
