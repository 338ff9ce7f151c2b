"""``GET /metrics``: Prometheus text (prometheus-client), named after Triton's and BentoML's quantities so their
dashboards carry over: requests by route and status, request latency, the parts of it (decode, queue,
inference), images vs. runner executions (their ratio is the mean batch, as Triton's ``nv_inference_count`` /
``nv_inference_exec_count``), the batch-size histogram, queue depth and requests in flight.

Each app has its own registry, so several servers in one process (tests) do not mix their counts.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str, max_batch: int):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mobilenets_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=r)
        self.latency = Histogram("mobilenets_request_duration_seconds", "request latency, arrival to response",
                                 ["route"], buckets=LATENCY, registry=r)
        self.decode = Histogram("mobilenets_decode_duration_seconds", "decoding and resizing one upload",
                                buckets=LATENCY, registry=r)
        self.queue = Histogram("mobilenets_queue_duration_seconds", "waiting for the inference worker",
                               buckets=LATENCY, registry=r)
        self.inference = Histogram("mobilenets_inference_duration_seconds", "one runner execution (a batch)",
                                   buckets=LATENCY, registry=r)
        sizes = sorted({1, 2, 4, 8, 16, 32, 64, max_batch})
        self.batch = Histogram("mobilenets_batch_size", "images per runner execution",
                               buckets=[s for s in sizes if s <= max_batch], registry=r)
        self.inferences = Counter("mobilenets_inferences", "images inferred", ["model"], registry=r)
        self.executions = Counter("mobilenets_executions", "runner executions (batches)", ["model"], registry=r)
        self.queue_depth = Gauge("mobilenets_queue_depth", "requests waiting for the inference worker", registry=r)
        self.inflight = Gauge("mobilenets_inflight_requests", "requests inside the server (decoding, waiting or "
                                                              "running)", registry=r)
        self.model = model

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch.observe(size)
        self.inference.observe(seconds)
        self.inferences.labels(self.model).inc(size)
        self.executions.labels(self.model).inc()

    def on_request(self, route: str, code: int, seconds: float) -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
