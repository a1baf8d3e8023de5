"""OpenAI-shaped request and response models, and OpenAI error objects.

Request models accept fields they do not use (clients send new ones all the time) but check the types and
ranges of those they do; a failure is a 400 `invalid_request_error` naming the parameter, never a 422 or 500.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.serve.logprobs import MAX_TOP, MAX_TOP_LEGACY

MAX_N = 8


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Req(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None  # token id (as a string, as JSON keys are) -> bias in [-100, 100]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and (len(v) > 4 or not all(isinstance(s, str) and s for s in v)):
            raise ValueError("at most 4 non-empty stop strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not k.strip().isdigit():
                raise ValueError(f"logit_bias keys are token ids; {k!r} is not one")
            if not -100 <= b <= 100:
                raise ValueError(f"logit_bias values are from -100 to 100; token {k} has {b}")
        return v

    def token_bias(self, vocab: int) -> dict[int, float]:
        """`logit_bias` as token id -> bias, each id checked against the model's vocabulary (400 if outside)."""
        out = {int(k): float(b) for k, b in (self.logit_bias or {}).items()}
        bad = sorted(t for t in out if t >= vocab)
        if bad:
            raise ApiError(400, f"logit_bias names token {bad[0]}, outside this model's vocabulary of {vocab}",
                           param="logit_bias")  # fmt: skip
        return out

    def refuse_unsupported(self) -> None:
        """A 400 naming a parameter whose meaning this server cannot honour, rather than a reply that silently
        ignores it: structured output, a forced tool call, and the legacy echo / suffix / best_of. Their off
        values (false, null, "text", "auto", "none") pass."""
        x = self.model_extra or {}
        off: dict[str, tuple[Any, ...]] = {"echo": (None, False), "suffix": (None, ""), "best_of": (None, 1, self.n)}
        for name, ok in off.items():
            if name in x and x[name] not in ok:
                raise ApiError(400, f"{name} is not supported by this server", param=name)
        rf = x.get("response_format")
        kind = rf.get("type") if isinstance(rf, dict) else rf
        if kind not in (None, "text"):
            raise ApiError(400, f"response_format {kind!r} is not supported: decoding is not constrained here; "
                           "ask for JSON in the prompt and validate the reply", param="response_format")  # fmt: skip
        for name in ("tool_choice", "function_call"):
            if x.get(name) not in (None, "auto", "none"):
                why = "this server does not generate tool calls, so it cannot force one (auto and none pass: text)"
                raise ApiError(400, f"{name}: {why}", param=name)

    def logprob_k(self) -> int | None:
        """None: no log-probabilities; k: each token's and the k most likely (the subclasses' own fields)."""
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) and self.stop else list(self.stop or [])

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            parts = []
            for p in self.content:
                if p.type != "text" or p.text is None:
                    raise ApiError(
                        400, f"content part of type {p.type!r} is not supported (text only)", param="messages"
                    )
                parts.append(p.text)
            return "".join(parts)
        return self.content or ""


class ChatRequest(_Req):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP)

    def logprob_k(self) -> int | None:
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Req):
    prompt: str | list[str]
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LEGACY)  # the legacy API's: how many most likely

    def logprob_k(self) -> int | None:
        return self.logprobs

    def prompt_text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ApiError(400, "give one prompt per request", param="prompt")
            return self.prompt[0]
        return self.prompt


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
