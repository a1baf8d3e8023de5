"""POST /v1/chat/completions and /v1/completions (with `stream: true` as SSE ending in `data: [DONE]`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from tunelab.serve.completions import complete
from tunelab.serve.protocol import ChatRequest, CompletionRequest
from tunelab.serve.state import state_of

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatRequest) -> Any:
    return await complete(state_of(request), request, body, True)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest) -> Any:
    return await complete(state_of(request), request, body, False)
