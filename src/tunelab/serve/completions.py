"""The serving logic of `/v1/chat/completions` and `/v1/completions` (the routes are in routes/chat.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from tunelab.errors import ModelError
from tunelab.govern.watermark import SCHEME
from tunelab.serve.engine import QueueFull
from tunelab.serve.guards import Decision, GuardConfig, check_chat, check_input, check_output
from tunelab.serve.host import Host
from tunelab.serve.protocol import ApiError, ChatRequest, CompletionRequest, new_id, now, usage
from tunelab.serve.state import ServerState
from tunelab.serve.streaming import Stream, sse


async def complete(state: ServerState, request: Request, body: ChatRequest | CompletionRequest, chat: bool) -> Any:
    """One chat or text completion, streamed or not: key, limits, guards, context check, decoding, ledger."""
    cfg, host, store, limiter, metrics = state.cfg, state.host, state.store, state.limiter, state.metrics
    t0 = time.perf_counter()
    key = state.authorise(request, body.model)
    rid = new_id("chatcmpl" if chat else "cmpl")
    status, pt, ct = 200, 0, 0
    decisions: list[Decision] = []
    gcfg = cfg.guards
    wm = None
    try:
        body.refuse_unsupported()
        adapter = state.adapter_for(key, body.model)
        limiter.check(key, cfg.retry_after_s)
        gcfg = cfg.model_guards.get(body.model, cfg.guards)
        blocked = guard_input(body, gcfg, decisions)
        if blocked:
            raise ApiError(
                400,
                "the request was blocked by a guard: "
                + ", ".join(f"{d.guard}" for d in decisions if d.action == "block"),
                code="content_filter",
                param="messages" if chat else "prompt",
            )
        prompt = prompt_ids(host, body, chat)
        pt = len(prompt)
        max_new = body.limit() or min(cfg.max_tokens, max(1, host.context - pt))
        if max_new > cfg.max_tokens:
            raise ApiError(
                400, f"max_tokens {max_new} is above this server's limit of {cfg.max_tokens}", param="max_tokens"
            )
        if pt + max_new > host.context:
            raise ApiError(
                400,
                f"this model's maximum context length is {host.context} tokens; the request has "
                f"{pt} prompt tokens and asks for {max_new} more",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        if adapter:
            await asyncio.to_thread(host.ensure_adapter, adapter)
        guarded = protected(body, request)
        out_filter = (
            (lambda text, final: guard_output(text, gcfg, decisions, guarded, final)) if output_guarded(gcfg) else None
        )
        wm = state.watermark_for(key, body.model)
        streams = [Stream(host, body, prompt, max_new, adapter, i, out_filter, metrics, wm) for i in range(body.n)]
        for s in streams:
            s.submit()
    except ApiError as e:
        status = e.status
        raise
    except ModelError as e:  # an adapter that fails its manifest check or cannot be loaded
        status = 503
        raise ApiError(
            503, f"model {body.model} is unavailable: {e}", type="server_error", code="model_unavailable"
        ) from None
    except QueueFull:
        status = 503
        raise ApiError(
            503,
            "the server is busy: too many requests waiting",
            type="server_busy",
            code="queue_full",
            headers={"Retry-After": str(cfg.retry_after_s)},
        ) from None
    finally:
        if status != 200:
            metrics.finished(body.model, status, pt, 0, time.perf_counter() - t0)
            store.record(
                request_id=rid,
                key_id=key.id,
                model=body.model,
                prompt_tokens=pt,
                completion_tokens=0,
                latency_s=time.perf_counter() - t0,
                status=status,
                guards=[d.to_json() for d in decisions],
            )

    def finish(completion: int, st: int = 200) -> None:
        metrics.finished(body.model, st, pt * len(streams), completion, time.perf_counter() - t0)
        store.record(
            request_id=rid,
            key_id=key.id,
            model=body.model,
            prompt_tokens=pt * len(streams),
            completion_tokens=completion,
            latency_s=time.perf_counter() - t0,
            status=st,
            guards=[d.to_json() for d in decisions],
        )

    if body.stream:
        headers = {"Cache-Control": "no-cache", "X-Request-Id": rid}
        if wm is not None:
            headers["X-Tunelab-Watermark"] = f"{SCHEME} {wm.fingerprint()}"
        return StreamingResponse(
            sse(request, body, streams, rid, chat, pt, finish), media_type="text/event-stream", headers=headers
        )
    try:
        results = await asyncio.gather(*(s.collect() for s in streams))
    except asyncio.CancelledError:
        for s in streams:
            s.cancel()
        finish(sum(s.count for s in streams), 499)
        raise
    ct = sum(s.count for s in streams)
    finish(ct)
    obj = "chat.completion" if chat else "text_completion"
    choices = []
    for i, (text, reason, lp) in enumerate(results):
        if chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                    "logprobs": lp,
                }
            )
        else:
            choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": lp})
    return {
        "id": rid,
        "object": obj,
        "created": now(),
        "model": body.model,
        "choices": choices,
        "usage": usage(pt * len(streams), ct),
        "system_fingerprint": f"tunelab-{host.name}" + (f"+{SCHEME}-{wm.fingerprint()}" if wm else ""),
    }


def guard_input(body: ChatRequest | CompletionRequest, cfg: GuardConfig, decisions: list[Decision]) -> bool:
    """Run the input guards on the conversation, each message read in its role (`guards.check_chat`: user
    turns, tool results and earlier assistant turns are scanned; system prompts are trusted), or on the
    prompt; redacting user turns in place."""
    if isinstance(body, ChatRequest):
        texts, ds, blocked = check_chat([(m.role, m.text()) for m in body.messages], cfg)
        for m, text in zip(body.messages, texts, strict=True):
            if text != m.text():
                m.content = text
    else:
        text, ds, blocked = check_input(body.prompt_text(), cfg)
        body.prompt = text
    decisions.extend(ds)
    return blocked


def protected(body: ChatRequest | CompletionRequest, request: Request) -> list[str]:
    """What the reply must not echo: the request's system and developer prompts, and the caller's key."""
    out = (
        [m.text() for m in body.messages if m.role in ("system", "developer")] if isinstance(body, ChatRequest) else []
    )
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        out.append(auth[7:].strip())
    return out


def output_guarded(cfg: GuardConfig) -> bool:
    return any(g.action != "off" for g in (cfg.pii_output, cfg.moderation_output, cfg.leakage))


def guard_output(
    text: str, cfg: GuardConfig, decisions: list[Decision], guarded: list[str], final: bool = True
) -> tuple[str, bool]:
    out, ds, blocked = check_output(text, cfg, guarded, final=final)
    for d in ds:  # one decision per guard and request, however often the text was checked while streaming
        if not any(x.guard == d.guard and x.detail == d.detail for x in decisions):
            decisions.append(d)
    return out, blocked


def prompt_ids(host: Host, body: ChatRequest | CompletionRequest, chat: bool) -> list[int]:
    from tunelab.models.chat import encode_prompt

    if isinstance(body, ChatRequest):
        # a tool's result goes to the template as a "tool" turn (ChatML and most templates render it; one
        # that cannot is the 400 below); tool calls themselves are not generated
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            ids = encode_prompt(host.tok, msgs)
        except Exception as e:
            raise ApiError(
                400, f"cannot render these messages with the model's chat template: {e}", param="messages"
            ) from None
    else:
        ids = list(host.tok(body.prompt_text(), add_special_tokens=False)["input_ids"])
    if not ids:
        raise ApiError(400, "the prompt is empty", param="messages" if chat else "prompt")
    return ids
