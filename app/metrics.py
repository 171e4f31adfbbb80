"""Prometheus metrics at /metrics (METRICS=1): requests, inference time, queue, memory, model load time."""
from __future__ import annotations

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.services.isnet_tiny_service import IsnetTinyService, rss_mb

INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def install_metrics(app: Flask, service: IsnetTinyService) -> None:
    """Register the collectors (one registry per app) and the /metrics route."""
    from app.api.bg_removal_api import check_api_key

    registry = CollectorRegistry()
    requests_total = Counter("pixport_requests_total", "HTTP requests by endpoint and status",
                             ["endpoint", "status"], registry=registry)
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
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        requests_total.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        check_api_key()
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
