"""GET /v1/models and /v1/models/{id}: the base, the configured adapters, and the key's fine-tuned models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tunelab.serve.protocol import ApiError
from tunelab.serve.state import ServerState, state_of
from tunelab.serve.store import ApiKey

router = APIRouter()


def visible(state: ServerState, key: ApiKey) -> list[dict[str, Any]]:
    names = [*state.host.models(), *(state.images.models() if state.images else [])]
    out = [{"id": m, "object": "model", "created": 0, "owned_by": "tunelab"} for m in names]
    if state.catalog is not None:
        out += state.catalog.models(key)
    return [m for m in out if key.allows(str(m["id"]))]


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    state = state_of(request)
    return {"object": "list", "data": visible(state, state.authorise(request))}


@router.get("/v1/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> dict[str, Any]:
    state = state_of(request)
    for m in visible(state, state.authorise(request)):
        if m["id"] == model:
            return m
    raise ApiError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
