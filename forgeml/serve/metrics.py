"""Prometheus metrics of the server, in a registry of its own (GET /metrics).

    forgeml_requests_total{route, method, model, status}   every HTTP response
    forgeml_request_duration_seconds{route, method}        its latency
    forgeml_requests_in_flight                             requests being handled now
    forgeml_batch_size{model}                              rows per forward pass
    forgeml_batch_requests{model}                          requests merged into one forward
    forgeml_inference_duration_seconds{model}              preprocessing + forward of a batch
    forgeml_queue_depth{model}                             requests waiting for the worker
    forgeml_rejected_requests_total{model, reason}         queue_full | timeout | not_ready | shutting_down
    forgeml_model_ready{model}                             1 once loaded and warmed up

`route` is the route template (`/v2/models/{name}/infer`), never the raw path, and `model` only
ever a served model's name, so a client cannot create new series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServeMetrics:
    def __init__(self, models: list[str]) -> None:
        disable_created_metrics()  # no *_created series: they double the output for nothing
        self.models = frozenset(models)
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "forgeml_requests",
            "HTTP requests by route template, method, model and status code",
            ["route", "method", "model", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "forgeml_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "forgeml_requests_in_flight", "HTTP requests being handled", registry=registry
        )
        self.batch_rows = Histogram(
            "forgeml_batch_size",
            "Rows in one forward pass",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "forgeml_batch_requests",
            "Requests merged into one forward pass",
            ["model"],
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "forgeml_inference_duration_seconds",
            "Preprocessing and forward pass of one batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "forgeml_queue_depth",
            "Requests waiting for the model's worker",
            ["model"],
            registry=registry,
        )
        self.rejected = Counter(
            "forgeml_rejected_requests",
            "Predict requests refused or dropped: queue_full, timeout, not_ready, shutting_down",
            ["model", "reason"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "forgeml_model_ready",
            "1 once the model is loaded and warmed up",
            ["model"],
            registry=registry,
        )
        for name in models:
            self.queue_depth.labels(name).set(0)
            self.model_ready.labels(name).set(0)

    # BatchMetrics (batching.py), called from the worker threads; prometheus_client is
    # thread-safe.
    def observe_batch(self, model: str, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.labels(model).observe(rows)
        self.batch_requests.labels(model).observe(requests)
        self.inference.labels(model).observe(seconds)

    def set_queue_depth(self, model: str, depth: int) -> None:
        self.queue_depth.labels(model).set(depth)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every response (including 401/413 from the middleware inside it) and its latency."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            model = (scope.get("path_params") or {}).get("name", "")
            model = model if model in self.metrics.models else ""
            method = scope["method"]
            self.metrics.requests.labels(route, method, model, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)
