"""The service's Prometheus metrics, in a registry of its own per app.

A registry per app (not prometheus-client's global one) lets several apps
live in one process (tests) without clashing. With `--workers N` each
worker process answers `/metrics` with its own counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGES = ("queue", "preprocess", "encode", "decode")
# Seconds: from a fraction of a millisecond (tiny models, queue waits) to the 30 s timeout.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    """Requests and errors by status, per-stage latency, batch sizes, queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "capgen_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "capgen_errors",
            "Error answers and failed images, by status and error code.",
            ["status", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "capgen_request_seconds",
            "Time from a request's arrival to its answer, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "capgen_stage_seconds",
            "Latency per stage: queue and preprocess per image; encode and decode per batch.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "capgen_batch_size",
            "Images per Captioner batch.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "capgen_queue_depth", "Images waiting for a batch.", registry=self.registry
        )
        self.in_flight = Gauge(
            "capgen_in_flight_requests", "Caption requests being answered.", registry=self.registry
        )
        self.uploading = Gauge(
            "capgen_uploads_in_progress",
            "Caption requests whose body is being read (at most --max-uploads).",
            registry=self.registry,
        )
        self.skipped = Counter(
            "capgen_skipped_images",
            "Queued images dropped before any work because their client left or timed out.",
            registry=self.registry,
        )
        for stage in STAGES:  # every stage shows up in /metrics from the start
            self.stage_seconds.labels(stage=stage)

    def render(self) -> bytes:
        return generate_latest(self.registry)
