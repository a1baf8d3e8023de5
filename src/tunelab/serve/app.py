"""The app factory: error handlers (OpenAI error objects, never a bare 422 or 500 page), the body-size limit,
the shared state, and the route groups. The jobs service plugs in here with its routers, its catalog of
fine-tuned models and its metrics, without serve importing it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client.registry import Collector
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.serve.config import ServeConfig
from tunelab.serve.guards import load_rule
from tunelab.serve.host import Host
from tunelab.serve.images import ImageHost
from tunelab.serve.limits import Limiter
from tunelab.serve.metrics import Metrics
from tunelab.serve.protocol import ApiError
from tunelab.serve.routes import admin, chat, images, models
from tunelab.serve.state import Catalog, ServerState
from tunelab.serve.store import Store


def create_app(
    cfg: ServeConfig,
    host: Host | None = None,
    store: Store | None = None,
    *,
    engine_thread: bool = True,
    routers: Iterable[APIRouter] = (),
    catalog: Catalog | None = None,
    collectors: Iterable[Collector] = (),
    own_body_limit: Collection[str] = (),
) -> Any:
    """The FastAPI app. With `engine_thread` the engine decodes in a thread of its own, started with the app;
    without, the caller runs `host.engine.run()` (`tunelab serve` runs it on the main thread: faster, see
    `Engine.run`). Routes under a prefix in `own_body_limit` check the size of their bodies themselves
    (file uploads stream to disk with a limit of their own)."""
    for g in [cfg.guards, *cfg.model_guards.values()]:  # a guard model that cannot load fails now, not per request
        load_rule(g.injection)
        load_rule(g.moderation_output)
    host = host or Host(cfg)
    store = store or Store(cfg.store)
    state = ServerState(cfg, host, store, Limiter(store), Metrics(host.engine, collectors), catalog,
                        server_watermark(cfg), ImageHost(cfg.images) if cfg.images.on else None)  # fmt: skip

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if engine_thread:
            host.engine.start()
        try:
            yield
        finally:
            host.engine.stop()

    app = FastAPI(
        title="tunelab", version="1", description="OpenAI-compatible API served by tunelab", lifespan=lifespan
    )
    app.state.server = state
    app.state.host, app.state.store, app.state.metrics = host, store, state.metrics
    _errors(app)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        if any(request.url.path.startswith(p) for p in own_body_limit):
            return await call_next(request)
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            return _error(ApiError(413, f"request body larger than {cfg.max_body_bytes} bytes"))
        return await call_next(request)

    for r in (admin.router, models.router, chat.router, images.router, *routers):
        app.include_router(r)
    return app


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return _error(ApiError(400, "the body is not valid JSON", param=None))
        return _error(ApiError(400, f"{'.'.join(loc) or 'body'}: {msg}", param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error(ApiError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        return _error(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))


def server_watermark(cfg: ServeConfig) -> Any:
    """The watermark of `cfg` with its key (made on first use), or None when it is off."""
    w = cfg.watermark
    if not w.enabled:
        return None
    from pathlib import Path

    from tunelab.errors import ConfigError
    from tunelab.govern.watermark import Watermark, default_key_file, load_key

    if cfg.backend != "tunelab":
        raise ConfigError("the watermark needs tunelab's own engine (backend: tunelab)", field="watermark.enabled")
    return Watermark(load_key(Path(w.key_file) if w.key_file else default_key_file()), w.gamma, w.delta)
