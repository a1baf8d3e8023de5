"""What every route of one server shares: config, model host, store, limiter, metrics, and the catalog of
models added while serving (the jobs service's fine-tuned models). Also where keys are checked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi import Request

from tunelab.govern.watermark import Watermark
from tunelab.serve.config import ServeConfig
from tunelab.serve.host import Host
from tunelab.serve.images import ImageHost
from tunelab.serve.limits import Limiter
from tunelab.serve.metrics import Metrics
from tunelab.serve.protocol import ApiError
from tunelab.serve.store import ApiKey, Store


class Catalog(Protocol):
    """Models beyond the configured ones, visible per key (the jobs service implements it)."""

    def models(self, key: ApiKey) -> list[dict[str, Any]]:
        """OpenAI model objects this key may use."""
        ...

    def adapter(self, key: ApiKey, name: str) -> Path | None:
        """The adapter directory of model `name` if this key may use it, else None."""
        ...


@dataclass
class ServerState:
    cfg: ServeConfig
    host: Host
    store: Store
    limiter: Limiter
    metrics: Metrics
    catalog: Catalog | None = None
    watermark: Watermark | None = None  # the server's, when `watermark.enabled`
    images: ImageHost | None = None  # the image models, when `images` is on

    def watermark_for(self, key: ApiKey, model: str) -> Watermark | None:
        """The watermark on this key's replies from `model`, per `watermark.models` and `watermark.keys`."""
        w = self.cfg.watermark
        if self.watermark is None or (w.models is not None and model not in w.models):
            return None
        return None if w.keys is not None and key.name not in w.keys else self.watermark

    def authorise(self, request: Request, model: str | None = None) -> ApiKey:
        h = request.headers.get("authorization", "")
        if not h.lower().startswith("bearer "):
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>", code="invalid_api_key")
        key = self.store.verify(h[7:].strip())
        if key is None:
            raise ApiError(401, "invalid or revoked API key", code="invalid_api_key")
        if model is not None and not key.allows(model):
            raise ApiError(
                403,
                f"this key may not use model {model!r}",
                type="permission_error",
                code="model_not_allowed",
                param="model",
            )
        return key

    def adapter_for(self, key: ApiKey, model: str) -> str | None:
        """The adapter that serves `model` for this key (None: the base model); 404 when there is none."""
        host = self.host
        if model == host.name:
            return None
        if model in host.models():
            return model
        path = self.catalog.adapter(key, model) if self.catalog else None
        if path is None:  # also a model of another owner: it does not exist for this key
            raise ApiError(
                404,
                f"the model {model!r} does not exist (see /v1/models)",
                param="model",
                code="model_not_found",
                type="invalid_request_error",
            )
        if host.adapter_path(model) != path:
            host.register(model, path)
        return model


def state_of(request: Request) -> ServerState:
    s: ServerState = request.app.state.server
    return s
