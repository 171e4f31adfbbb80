"""Prometheus metrics at /metrics (METRICS=1): requests, inference time, queue, memory, model load time."""
from __future__ import annotations

import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.services.isnet_tiny_service import IsnetTinyService, rss_mb

INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
# Whole requests: from a few ms (health, errors) to a queued inference near the 60 s timeout.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def install_metrics(app: Flask, service: IsnetTinyService) -> None:
    """Register the collectors (one registry per app) and the /metrics route."""
    from app.api.bg_removal_api import check_api_key

    registry = CollectorRegistry()
    requests_total = Counter("pixport_requests_total", "HTTP requests by endpoint and status",
                             ["endpoint", "status"], registry=registry)
    durations = Histogram("pixport_request_duration_seconds",
                          "HTTP request time in the app (parse, queue, inference, encode) by endpoint and status",
                          ["endpoint", "status"], buckets=REQUEST_BUCKETS, registry=registry)
    inference = Histogram("pixport_inference_seconds", "Model inference time per image",
                          buckets=INFERENCE_BUCKETS, registry=registry)
    Gauge("pixport_queue_length", "Requests waiting for the model",
          registry=registry).set_function(lambda: service.queue_length)
    Gauge("pixport_process_rss_bytes", "Resident memory of this process",
          registry=registry).set_function(lambda: rss_mb() * 2**20)
    Gauge("pixport_model_load_seconds", "Time the current model took to load (0 before it loads)",
          registry=registry).set_function(lambda: service.stats.load_seconds or 0.0)
    Gauge("pixport_model_loaded", "1 when a model session is loaded",
          registry=registry).set_function(lambda: 1.0 if service.loaded else 0.0)
    service.add_inference_listener(inference.observe)

    @app.after_request
    def count_request(response: Response) -> Response:
        # The route's pattern, never the raw path, so unknown URLs cannot create new series.
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        labels = {"endpoint": endpoint, "status": str(response.status_code)}
        requests_total.labels(**labels).inc()
        started = g.get("started")
        if started is not None:
            durations.labels(**labels).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        check_api_key()
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
