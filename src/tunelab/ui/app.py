"""The whole server with the web app: serve's API, the jobs service, and the pages at `/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.staticfiles import StaticFiles

from tunelab.serve.config import ServeConfig
from tunelab.serve.store import Store


def create_app(cfg: ServeConfig, host: Any = None, store: Store | None = None, *, engine_thread: bool = True) -> Any:
    from tunelab.jobs.service import create_app as jobs_app
    from tunelab.ui.pages import router

    app = jobs_app(cfg, host, store, engine_thread=engine_thread)
    if cfg.jobs.enabled:
        app.include_router(router)
        app.mount("/ui/static", StaticFiles(directory=Path(__file__).parent / "static"), name="ui-static")
    return app
