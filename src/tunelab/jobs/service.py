"""What the jobs service hands to the app factory: its routers, the catalog of fine-tuned models and its
metrics, all over one `JobStore` on the server's store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tunelab.jobs.export_store import ExportStore
from tunelab.jobs.store import JobStore
from tunelab.serve.config import ServeConfig
from tunelab.serve.store import ApiKey, Store

DURATION_BUCKETS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


def owner_filter(key: ApiKey) -> str | None:
    """Whose things a key sees: its own, or (admin) everyone's."""
    return None if key.admin else key.id


class JobsCatalog:
    """Fine-tuned models (succeeded jobs and their checkpoints) as models a key may call."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def models(self, key: ApiKey) -> list[dict[str, Any]]:
        return [
            {"id": name, "object": "model", "created": created, "owned_by": owner}
            for name, _, created, owner in self.jobs.fine_tuned(owner_filter(key))
        ]

    def adapter(self, key: ApiKey, name: str) -> Path | None:
        if not name.startswith("ft:"):
            return None
        for n, path, _, _ in self.jobs.fine_tuned(owner_filter(key)):
            if n == name:
                return Path(path)
        return None


class JobsCollector(Collector):
    """Jobs by status, and how long finished jobs took (read from the store at scrape time)."""

    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("tunelab_jobs", "Fine-tuning jobs by status", labels=["status"])
        for status, n in sorted(self.jobs.status_counts().items()):
            g.add_metric([status], n)
        yield g
        h = HistogramMetricFamily("tunelab_job_duration_seconds", "Start to end of finished jobs", labels=["status"])
        by: dict[str, list[float]] = {}
        for status, d in self.jobs.durations():
            by.setdefault(status, []).append(d)
        for status, ds in sorted(by.items()):
            buckets = [(str(b), sum(1 for d in ds if d <= b)) for b in DURATION_BUCKETS]
            h.add_metric([status], [*buckets, ("+Inf", len(ds))], sum(ds))
        yield h


@dataclass
class JobsService:
    cfg: ServeConfig
    jobs: JobStore
    exports: ExportStore

    @classmethod
    def open(cls, cfg: ServeConfig, store: Store) -> JobsService:
        return cls(cfg, JobStore(store), ExportStore(store))

    def app_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `serve.app.create_app` that plug the service in."""
        from tunelab.jobs import exports, routes

        return {
            "routers": [routes.files_router, routes.jobs_router, exports.router],
            "catalog": JobsCatalog(self.jobs),
            "collectors": [JobsCollector(self.jobs)],
            "own_body_limit": ["/v1/files"],
        }


def create_app(cfg: ServeConfig, host: Any = None, store: Store | None = None, *, engine_thread: bool = True) -> Any:
    """`serve.app.create_app` with the jobs service plugged in (unless `jobs.enabled` is false)."""
    from tunelab.serve.app import create_app as serve_app

    if not cfg.jobs.enabled:
        return serve_app(cfg, host, store, engine_thread=engine_thread)
    store = store or Store(cfg.store)
    svc = JobsService.open(cfg, store)
    app = serve_app(cfg, host, store, engine_thread=engine_thread, **svc.app_kwargs())
    app.state.jobs = svc
    return app
