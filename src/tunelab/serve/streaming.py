"""Streaming: tokens from the engine thread to the event loop (`Mailbox`), one choice's text deltas with stop
strings, output guards and log-probabilities (`Stream`), and the SSE body of a streamed response (`sse`)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from tunelab.serve.engine import GenRequest
from tunelab.serve.logprobs import chat_entries, legacy
from tunelab.serve.protocol import CompletionRequest, now, usage

if TYPE_CHECKING:
    from tunelab.serve.host import Host
    from tunelab.serve.metrics import Metrics


class Mailbox:
    """Hands tokens from the engine thread to the event loop with one wake-up per batch, not one per token.

    `call_soon_threadsafe` writes to the loop's self-pipe and takes the GIL back afterwards: once per token it
    cost the decoding thread ~5% of a single-stream step and 8 wake-ups per step at batch 8. Items posted while
    a drain is pending ride along with it."""

    _boxes: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox]] = weakref.WeakKeyDictionary()
    _boxes_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[asyncio.Queue[Any], Any]] = deque()
        self.lock = threading.Lock()
        self.pending = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Mailbox:
        with cls._boxes_lock:
            box = cls._boxes.get(loop)
            if box is None:
                box = cls._boxes[loop] = cls(loop)
            return box

    def post(self, q: asyncio.Queue[Any], item: Any) -> None:
        with self.lock:
            self.items.append((q, item))
            if self.pending:
                return
            self.pending = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed (server shutting down): nobody is waiting any more
            with self.lock:
                self.items.clear()
                self.pending = False

    def _drain(self) -> None:
        with self.lock:
            items = list(self.items)
            self.items.clear()
            self.pending = False
        for q, item in items:
            q.put_nowait(item)


class Stream:
    """One choice of a request: its engine request, its tokens as they come, stop strings, text deltas."""

    def __init__(
        self,
        host: Host,
        body: Any,
        prompt: list[int],
        max_new: int,
        adapter: str | None,
        index: int,
        out_filter: Any = None,
        metrics: Metrics | None = None,
        watermark: Any = None,
    ):
        self.host, self.index, self.metrics = host, index, metrics
        self.last_token: float | None = None
        self.out_filter = out_filter  # (text, final?) -> (guarded text, blocked?)
        self.loop = asyncio.get_running_loop()
        self.box = Mailbox.of(self.loop)
        self.q: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.count = 0
        self.stops = body.stops()
        self.k = body.logprob_k()
        self.legacy = isinstance(body, CompletionRequest)
        self.spans: list[tuple[int, int]] = []  # each token's characters in the decoded reply
        self.lp_next = 0  # the first token whose log-probabilities are not sent yet
        self.lp_limit: int | None = None  # where an output guard first changed the reply: no entries past it
        seed = body.seed + index if body.seed is not None else None
        self.req = GenRequest(
            prompt=prompt,
            max_tokens=max_new,
            on_token=self._on_token,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=seed,
            adapter=adapter,
            watermark=watermark,
            logit_bias=body.token_bias(host.vocab) if body.logit_bias else None,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logprobs=self.k,
        )

    def _on_token(self, tok: int | None, reason: str | None) -> None:
        self.box.post(self.q, (tok, reason))

    def _timed(self) -> None:
        """Time to first token and queue time on the first token, the gap since the last one after."""
        if self.metrics is None:
            return
        t = time.perf_counter()
        if self.last_token is None:
            self.metrics.ttft_s.observe(t - self.req.submitted)
            if self.req.admitted is not None:
                self.metrics.queue_s.observe(self.req.admitted - self.req.submitted)
        else:
            self.metrics.itl_s.observe(t - self.last_token)
        self.last_token = t

    def submit(self) -> None:
        self.host.engine.submit(self.req)

    def cancel(self) -> None:
        self.req.cancelled.set()

    def _view(self, text: str, final: bool = True) -> tuple[str, bool]:
        """The guarded text and whether it is blocked; `final`: the whole reply (the learned moderation reads
        only that), else the reply so far."""
        return self.out_filter(text, final) if self.out_filter else (text, False)

    async def deltas(self) -> AsyncIterator[tuple[str, str | None, range | None]]:
        """(new text, finish reason or None, the tokens whose log-probabilities it brings or None when none are
        asked for: `logprobs` formats them); the last item carries the reason. With output guards the text is
        checked as a whole each time and the last HOLD characters are held back, so a finding that is still
        being written is redacted before any of it is sent."""
        hold = HOLD if self.out_filter else 0
        while True:
            tok, reason = await self.q.get()
            if tok is not None:
                self._timed()
                self.count += 1
                self.ids.append(tok)
                raw = str(self.host.tok.decode(self.ids, skip_special_tokens=True))
                if self.k is not None:
                    self._span(len(raw))
                cut = _first_stop(raw, self.stops)
                if cut is not None:
                    self.cancel()
                    view, blocked = self._view(raw[:cut])
                    if blocked:
                        yield "", "content_filter", None
                    else:
                        yield view[self.sent :], "stop", self._due(raw[:cut], view, len(view), True)
                    self.text, self.sent = view, len(view)
                    return
                view, blocked = self._view(raw, final=False)
                if blocked:
                    self.cancel()
                    yield "", "content_filter", None
                    return
                safe = len(view) - max(hold, _held(view, self.stops))
                if safe > self.sent and view.startswith(self.text[: self.sent]):
                    delta = view[self.sent : safe]
                    self.sent = safe
                    self.text = view
                    yield delta, None, self._due(raw, view, safe, False)
                continue
            if reason and reason.startswith("error"):
                raise RuntimeError(reason)
            raw = str(self.host.tok.decode(self.ids, skip_special_tokens=True))
            view, blocked = self._view(raw)
            if blocked:
                yield "", "content_filter", None
                return
            self.text = view
            due = self._due(raw, view, len(view), True)
            yield view[self.sent :], "length" if reason == "length" else "stop", due
            self.sent = len(view)
            return

    def _span(self, n: int) -> None:
        """Record the characters of the newest token, the decoded reply being `n` characters long now."""
        before = self.spans[-1][1] if self.spans else 0
        if n < before:  # bytes of a character now whole: fewer U+FFFD than before
            self.spans = [(min(a, n), min(b, n)) for a, b in self.spans]
        self.spans.append((min(before, n), n))

    def _due(self, raw: str, view: str, shown: int, final: bool) -> range | None:
        """The tokens not yet covered whose log-probabilities are now due, their text being shown (`shown`
        characters of `view`, the guarded `raw`): wholly, or at the end any of it (a token cut by a stop string).
        None when not asked for. Where the guard changed the text, no token from that character on gets any:
        its `token` would show what was removed."""
        if self.k is None:
            return None
        if self.lp_limit is None and view != raw[: len(view)]:
            self.lp_limit = next((i for i, (a, b) in enumerate(zip(view, raw, strict=False)) if a != b),
                                 min(len(view), len(raw)))  # fmt: skip
        closed = self.lp_limit is not None
        limit = min(shown, self.lp_limit) if self.lp_limit is not None else shown
        entries = self.req.token_logprobs
        i = self.lp_next
        while i < len(self.spans) and i < len(entries):
            a, b = self.spans[i]
            if b > limit and not (final and not closed and a < limit):
                break
            i += 1
        due = range(self.lp_next, i)
        self.lp_next = i
        return due

    def logprobs(self, due: range | None) -> dict[str, Any] | None:
        """The `logprobs` object of these tokens (`deltas`' third item), as the request's API shapes it."""
        if due is None or self.k is None:
            return None
        chosen = [self.req.token_logprobs[j] for j in due]
        if self.legacy:
            return legacy(chosen, [self.spans[j][0] for j in due], self.host.token_text, self.k)
        return {"content": chat_entries(chosen, self.host.token_text, self.k), "refusal": None}

    async def collect(self) -> tuple[str, str, dict[str, Any] | None]:
        parts, reason = [], "stop"
        async for d, r, _ in self.deltas():
            parts.append(d)
            if r:
                reason = r
        return "".join(parts), reason, self.logprobs(range(self.lp_next) if self.k is not None else None)


HOLD = 40  # characters held back while streaming through output guards


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _held(text: str, stops: list[str]) -> int:
    n = 1 if text.endswith("\ufffd") else 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n


async def sse(
    request: Any, body: Any, streams: list[Stream], rid: str, chat: bool, pt: int, finish: Any
) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = now()

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {"id": rid, "object": obj, "created": created, "model": body.model, "choices": choices, **extra}
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    merged: asyncio.Queue[tuple[int, str, str | None, dict[str, Any] | None] | None] = asyncio.Queue()

    async def pump(s: Stream) -> None:
        try:
            async for d, r, due in s.deltas():
                await merged.put((s.index, d, r, s.logprobs(due)))
        finally:
            await merged.put(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    done = 0
    status = 200
    try:
        if chat:
            yield chunk(
                [
                    {"index": s.index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    for s in streams
                ]
            )
        while done < len(streams):
            if await request.is_disconnected():
                status = 499
                break
            try:
                item = await asyncio.wait_for(merged.get(), timeout=0.5)
            except TimeoutError:
                continue
            if item is None:
                done += 1
                continue
            i, d, r, lp = item
            if chat:
                yield chunk([{"index": i, "delta": {"content": d} if d else {}, "finish_reason": r, "logprobs": lp}])
            else:
                yield chunk([{"index": i, "text": d, "finish_reason": r, "logprobs": lp}])
        if status == 200:
            ct = sum(s.count for s in streams)
            if body.include_usage():
                yield chunk([], usage=usage(pt * len(streams), ct))
            yield b"data: [DONE]\n\n"
    finally:
        for s in streams:
            s.cancel()
        for t in tasks:
            t.cancel()
        finish(sum(s.count for s in streams), status)
