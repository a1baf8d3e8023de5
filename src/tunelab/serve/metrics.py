"""Prometheus metrics of one server, through `prometheus-client` (a registry per app, so tests can build many).

Requests and tokens by model and status, request time, time to first token, time between tokens and time
queued before joining the batch (histograms), the engine's gauges read at scrape time, and whatever extra
collectors the app was given (the jobs service adds jobs by status and job durations)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, engine: Any, collectors: Iterable[Collector] = ()) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tunelab_requests", "Requests by model and HTTP status", ["model", "status"],
                                registry=r)  # fmt: skip
        self.tokens = Counter("tunelab_tokens", "Tokens by kind (prompt, completion)", ["kind"], registry=r)
        self.request_s = Histogram("tunelab_request_seconds", "Time from request to its last token", ["model"],
                                   buckets=_SLOW, registry=r)  # fmt: skip
        self.ttft_s = Histogram("tunelab_time_to_first_token_seconds", "Time from request to first token",
                                buckets=(*_FAST, 30.0), registry=r)  # fmt: skip
        self.itl_s = Histogram("tunelab_inter_token_seconds", "Time between a choice's tokens", buckets=_FAST,
                               registry=r)  # fmt: skip
        self.queue_s = Histogram("tunelab_queue_seconds", "Time waiting before joining the running batch",
                                 buckets=(*_FAST, 30.0), registry=r)  # fmt: skip
        r.register(_EngineCollector(engine))
        for c in collectors:
            r.register(c)

    def finished(self, model: str, status: int, prompt: int, completion: int, seconds: float) -> None:
        self.requests.labels(model=model, status=str(status)).inc()
        if status == 200:
            self.tokens.labels(kind="prompt").inc(prompt)
            self.tokens.labels(kind="completion").inc(completion)
            self.request_s.labels(model=model).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """The engine's state, read at scrape time."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        eng = self.engine
        yield GaugeMetricFamily("tunelab_running_sequences", "Sequences in the running batch", value=eng.running)
        yield GaugeMetricFamily("tunelab_queue_depth", "Requests waiting for the batch", value=eng.waiting.qsize())
        yield CounterMetricFamily("tunelab_decode_steps", "Decoding steps since start", value=eng.steps)
        prefixes = getattr(eng.runner, "prefixes", None)  # the lean decoder's prefix cache
        if prefixes is not None:
            yield CounterMetricFamily(
                "tunelab_prefix_blocks_reused", "Prompt blocks served from the prefix cache", value=prefixes.hits
            )
