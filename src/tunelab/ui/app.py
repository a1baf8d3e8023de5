"""The whole server with the web app: serve's API, the jobs service, and the pages at `/`.

Pages are server-rendered (Jinja2, autoescaped) with a little plain JS for the live parts (progress over SSE,
the column preview, the playground's stream, rating keys): one process, no build step, nothing from a CDN, and
every form works without JS. One module per screen: pages (sign-in, runs), upload, files (audit, train),
results (compare, sweep), rate (blind A/B), playground (try, snippets, downloads), exports (GGUF,
merged, adapter, with their parity), admin (keys, usage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.staticfiles import StaticFiles

from tunelab.serve.config import ServeConfig
from tunelab.serve.store import Store


def create_app(cfg: ServeConfig, host: Any = None, store: Store | None = None, *, engine_thread: bool = True) -> Any:
    from tunelab.jobs.service import create_app as jobs_app
    from tunelab.ui import admin, exports, files, pages, playground, rate, results, upload, web

    app = jobs_app(cfg, host, store, engine_thread=engine_thread)
    if cfg.jobs.enabled:
        for m in (pages, upload, files, results, rate, playground, exports, admin):
            app.include_router(m.router)
        web.install(app)
        app.mount("/ui/static", StaticFiles(directory=Path(__file__).parent / "static"), name="ui-static")
    return app
