"""GET /health (no key: what decodes, how busy it is) and GET /metrics (Prometheus exposition)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from tunelab.serve.metrics import CONTENT_TYPE
from tunelab.serve.state import state_of

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    host = state_of(request).host
    return {
        "status": "ok",
        "model": host.name,
        "decoder": host.runner.decoder,  # lean | hf
        "weights": host.runner.weights,  # fp32 | fp16 | bf16 | int8 (`quantize`)
        "kernel": host.runner.kernel,  # mkl | fbgemm | onednn | tunelab | tunelab+onednn | torch
        "running": host.engine.running,
        "waiting": host.engine.waiting.qsize(),
    }


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(state_of(request).metrics.exposition(), media_type=CONTENT_TYPE)
