"""POST /v1/images/generations in OpenAI's shape: `{"created", "data": [{"b64_json", "revised_prompt"}], ...}`.

`model` picks the image base or one of its adapters (images.adapters in the serve config). `prompt` names the
class (a class-conditioned base), or is the text a pipeline's text encoder reads. `n` images; `size` must be the
model's own (it draws at one resolution); `response_format` b64_json (a url would need image hosting, which this
server does not do). `seed` (an extension) makes a request repeatable.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tunelab.serve.images import class_in
from tunelab.serve.protocol import ApiError, new_id
from tunelab.serve.state import state_of

router = APIRouter()


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # quality, style, user...: accepted, not used

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    seed: int | None = Field(None, ge=0, le=2**31)


@router.post("/v1/images/generations")
async def generations(request: Request, body: ImageRequest) -> dict[str, Any]:
    state = state_of(request)
    images = state.images
    if images is None:
        raise ApiError(
            404,
            "this server serves no image models (set images.enabled in its config)",
            code="model_not_found",
            param="model",
        )
    model = body.model or images.base_name
    key = state.authorise(request, model)
    t0 = time.perf_counter()
    rid = new_id("img")
    status = 200
    try:
        if model not in images.models():
            raise ApiError(
                404,
                f"the image model {model!r} does not exist; served: {', '.join(images.models())}",
                param="model",
                code="model_not_found",
            )
        state.limiter.check(key, state.cfg.retry_after_s)
        if body.response_format == "url":
            raise ApiError(
                400, "response_format url is not supported: this server returns b64_json", param="response_format"
            )
        if body.n > images.cfg.max_n:
            raise ApiError(400, f"n {body.n} is above this server's limit of {images.cfg.max_n}", param="n")
        classes = images.classes(model)
        label = body.prompt if images.text(model) else class_in(body.prompt, classes)
        if isinstance(label, list):
            which = f"names several ({', '.join(label)})" if label else "names none"
            raise ApiError(
                400, f"the prompt {which} of the classes {model!r} draws: {', '.join(classes)}", param="prompt"
            )
        size = images.size(model)
        if body.size not in (None, "auto", size):
            raise ApiError(400, f"size {body.size!r}: {model!r} draws {size} images", param="size")
        seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
        out = await asyncio.to_thread(images.generate, model, label, body.n, seed)
    except ApiError as e:
        status = e.status
        raise
    finally:
        state.store.record(
            request_id=rid,
            key_id=key.id,
            model=model,
            prompt_tokens=0,
            completion_tokens=0,
            latency_s=time.perf_counter() - t0,
            status=status,
        )
    return {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(p).decode(), "revised_prompt": out.label} for p in out.pngs],
        "size": out.size,
        "output_format": "png",
        "seeds": out.seeds,
    }
