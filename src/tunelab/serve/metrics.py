"""Prometheus metrics for `GET /metrics`: one registry per server, so tests can run several."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from .engine import Engine

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
RELEASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 5)


class Metrics:
    def __init__(self, engine: Engine) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "Requests by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("tunelab_request_errors", "Requests that ended in an error, by model and status",
                              ["model", "status"], registry=r)
        self.latency = Histogram("tunelab_request_latency_seconds", "Time from request to last token",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tunelab_time_to_first_token_seconds", "Time from request to first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "Prompt tokens by model", ["model"], registry=r)
        self.completion_tokens = Counter("tunelab_completion_tokens", "Generated tokens by model", ["model"],
                                         registry=r)
        Gauge("tunelab_generation_tokens_per_second", "Generated tokens per second over the last 10 s",
              registry=r).set_function(engine.tokens_per_second)
        Gauge("tunelab_queue_depth", "Requests waiting for a place in the batch",
              registry=r).set_function(lambda: engine.queue_depth)
        Gauge("tunelab_active_rows", "Sequences being generated now", registry=r).set_function(
            lambda: engine.active_rows)
        Gauge("tunelab_adapters_loaded", "Adapters loaded", registry=r).set_function(lambda: len(engine.adapters))
        self.adapter = Gauge("tunelab_adapter_loaded", "1 for each loaded adapter", ["adapter"], registry=r)
        self.released = Histogram("tunelab_cancelled_release_seconds", "From a client's disconnect being seen to its "
                                  "sequences leaving the batch", buckets=RELEASE_BUCKETS, registry=r)
        engine.on_release = self.released.observe

    def observe(self, model: str, endpoint: str, status: int, latency: float | None = None,
                ttft: float | None = None, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(model, str(status)).inc()
        if latency is not None:
            self.latency.labels(model).observe(latency)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
        if prompt_tokens:
            self.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(model).inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
