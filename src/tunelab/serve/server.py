"""`tunelab serve`: an OpenAI-compatible API over the continuous-batching engine.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with `stream: true` as SSE
ending in `data: [DONE]`), GET /health (no auth), GET /metrics (Prometheus text), /openapi.json.
Every /v1 route needs `Authorization: Bearer <key>`; keys may be limited to some models and carry request
(per minute) and token (per day) limits. Every request that reaches a model is one ledger row.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import weakref
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import ConfigError, ModelError
from tunelab.serve.api import ApiError, ChatRequest, CompletionRequest, new_id, now, usage
from tunelab.serve.engine import Engine, GenRequest, QueueFull
from tunelab.serve.guards import Decision, GuardConfig, check_input, check_output, load_classifier
from tunelab.serve.store import ApiKey, Store


def lean_weights(quantize: str) -> str | None:
    """What `quantize` (auto | none | fp16 | bf16 | int8) means for the lean decoder on this machine (None: fp32).

    auto: bf16 where the CPU multiplies bf16 in hardware (the fastest at batch 8 there: AMX), else fp16 where
    fbgemm runs (x86: half the bytes to read, products in fp32), else fp32."""
    from tunelab.hardware import cpu_bf16, fbgemm

    if quantize == "auto":
        return "bf16" if cpu_bf16() else "fp16" if fbgemm() else None
    return None if quantize == "none" else quantize


class ServeConfig(BaseModel):
    model_config = {"extra": "forbid"}

    model: str | None = None
    adapters: dict[str, Path] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    store: str | None = None  # path of the SQLite file (default $TUNELAB_HOME/tunelab.db)
    max_batch: int = Field(8, ge=1)
    engine: Literal["auto", "lean", "hf"] = "auto"  # lean decoder where it knows the model, else transformers
    # tunelab: its own engine (CPU or GPU); vllm: vLLM's engine on a GPU (serve/vllm_engine.py), with `vllm:`
    # passed on to its EngineArgs; the API, keys, limits, guards and ledger are the same either way
    backend: Literal["tunelab", "vllm"] = "tunelab"
    vllm: dict[str, Any] = Field(default_factory=dict)
    # weights of the lean decoder (`lean_weights`): auto = bf16 where the CPU multiplies bf16 in hardware (AMX,
    # AVX512-BF16), else fp16 (x86), else fp32 ("none"); fp16 / bf16 / int8: half / half / a quarter of the bytes
    # to read per token, close to but not equal to fp32 (docs/serving.md has how close)
    quantize: Literal["auto", "none", "fp16", "bf16", "int8"] = "auto"
    max_queue: int = Field(64, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_tokens: int = Field(2048, ge=1)  # the most a request may ask for
    max_context: int | None = Field(None, ge=16)  # default: the model's own
    adapter_cache: int = Field(4, ge=1)  # adapters kept loaded (LRU)
    require_manifest: bool = False  # refuse adapters without a manifest to check their files against
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)  # model -> input_per_1k / output_per_1k
    retry_after_s: int = Field(2, ge=1)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    model_guards: dict[str, GuardConfig] = Field(default_factory=dict)  # per served model, replacing `guards`


@dataclass
class Metrics:
    requests: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0
    ttft_sum: float = 0.0

    def prometheus(self, engine: Engine) -> str:
        lines = ["# TYPE tunelab_requests_total counter"]
        for (model, status), n in sorted(self.requests.items()):
            lines.append(f'tunelab_requests_total{{model="{model}",status="{status}"}} {n}')
        lines += [
            "# TYPE tunelab_tokens_total counter",
            f'tunelab_tokens_total{{kind="prompt"}} {self.prompt_tokens}',
            f'tunelab_tokens_total{{kind="completion"}} {self.completion_tokens}',
            "# TYPE tunelab_request_seconds summary",
            f"tunelab_request_seconds_sum {self.latency_sum:.6f}",
            f"tunelab_request_seconds_count {self.latency_count}",
            "# TYPE tunelab_running_sequences gauge",
            f"tunelab_running_sequences {engine.running}",
            "# TYPE tunelab_queue_depth gauge",
            f"tunelab_queue_depth {engine.waiting.qsize()}",
            "# TYPE tunelab_decode_steps_total counter",
            f"tunelab_decode_steps_total {engine.steps}",
        ]
        prefixes = getattr(engine.runner, "prefixes", None)  # the lean decoder's prefix cache
        if prefixes is not None:
            lines += ["# TYPE tunelab_prefix_blocks_reused_total counter",
                      f"tunelab_prefix_blocks_reused_total {prefixes.hits}"]  # fmt: skip
        return "\n".join(lines) + "\n"


class Host:
    """The model, its tokenizer, the adapters (lazily loaded, LRU, checked against a manifest) and the engine."""

    def __init__(self, cfg: ServeConfig) -> None:
        from tunelab.evaluate.generation import eos_ids
        from tunelab.models.loading import check_model_spec, load_model, load_tokenizer, resolve_model

        check_model_spec(cfg.model)
        for name, path in cfg.adapters.items():
            if not (Path(path) / "adapter_config.json").is_file():
                raise ModelError(f"adapter {name!r}: not a PEFT adapter directory", file=path, field="--adapter")
        self.cfg = cfg
        self.resolved = resolve_model(cfg.model)
        self.name = self.resolved.name
        self.tok = load_tokenizer(self.resolved.path)
        self.engine: Engine
        self.runner: Any
        if cfg.backend == "vllm":
            self._vllm(cfg)
        else:
            model = load_model(self.resolved.path)
            self.context = cfg.max_context or _positions(model.config)
            self.runner = self._runner(model, cfg)
            self.engine = Engine(
                model,
                max_batch=cfg.max_batch,
                max_queue=cfg.max_queue,
                eos_ids=frozenset(eos_ids(model, self.tok)),
                runner=self.runner,
            )
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.adapter_lock = threading.Lock()

    def _vllm(self, cfg: ServeConfig) -> None:
        """vLLM's engine behind tunelab's interface; the weights are read by vLLM, not loaded here."""
        from transformers import AutoConfig, GenerationConfig

        from tunelab.evaluate.generation import eos_ids_of
        from tunelab.serve.vllm_engine import VLLMAdapters, VLLMEngine, build_llm

        path = Path(self.resolved.path)
        self.context = cfg.max_context or _positions(AutoConfig.from_pretrained(path))
        try:
            gc = GenerationConfig.from_pretrained(path)
        except OSError:  # no generation_config.json: the tokenizer's EOS alone
            gc = None
        adapters = {k: Path(v) for k, v in cfg.adapters.items()}
        llm = build_llm(path, context=self.context, max_batch=cfg.max_batch, adapters=adapters,
                        max_loras=cfg.adapter_cache, extra=cfg.vllm)  # fmt: skip
        self.runner = VLLMAdapters(llm, str(cfg.vllm.get("dtype", "auto")))
        self.engine = VLLMEngine(llm, self.runner, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                                 eos_ids=frozenset(eos_ids_of(self.tok, gc)))  # fmt: skip

    @staticmethod
    def _runner(model: Any, cfg: ServeConfig) -> Any:
        """The lean decoder when it can run the model and every configured adapter, else transformers."""
        from tunelab.serve.engine import make_runner
        from tunelab.serve.lean import LeanModel, adapter_supported

        kind = cfg.engine
        if kind == "auto":
            why = LeanModel.supports(model) or next(
                (f"adapter {n}: {w}" for n, p in cfg.adapters.items() if (w := adapter_supported(Path(p)))), None
            )
            if why:
                print(f"lean decoder not used ({why}): decoding with the transformers forward", flush=True)
                kind = "hf"
        quantize = None if kind == "hf" and cfg.quantize == "auto" else lean_weights(cfg.quantize)
        if cfg.quantize == "auto" and quantize:
            why = "this CPU multiplies bf16 in hardware" if quantize == "bf16" else "no bf16 units on this CPU"
            print(f"lean decoder with {quantize} weights ({why}; --quantize none for fp32)", flush=True)
        try:
            runner = make_runner(model, kind=kind, max_rows=cfg.max_batch, quantize=quantize)
        except ValueError as e:
            raise ConfigError(str(e), field="engine" if "lean" in str(e) else "quantize") from None
        if getattr(runner, "kernel_note", None):
            print(
                f"bf16 products through oneDNN only: tunelab's bf16 kernel not used ({runner.kernel_note})",
                flush=True,
            )
        return runner

    def models(self) -> list[str]:
        return [self.name, *self.cfg.adapters]

    def ensure_adapter(self, name: str) -> None:
        """Load `name` (verified) if it is not loaded; evict the least recently used beyond the cache size."""
        with self.adapter_lock:
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return
            path = Path(self.cfg.adapters[name])
            verify_adapter(path, require=self.cfg.require_manifest)
            eng = self.engine
            with eng.lock:  # between decoding steps
                try:
                    self.runner.load_adapter(path, name)
                except (ValueError, KeyError) as e:
                    raise ModelError(f"cannot load adapter: {e}", file=path) from None
                self.loaded[name] = path
                busy = {r.req.adapter for r in eng.rows}
                while len(self.loaded) > self.cfg.adapter_cache:
                    old = next((a for a in self.loaded if a not in busy and a != name), None)
                    if old is None:
                        break
                    self.runner.delete_adapter(old)
                    del self.loaded[old]


def _positions(conf: Any) -> int:
    """A model config's context length (2048 where it says none)."""
    return int(getattr(conf, "max_position_embeddings", 2048) or 2048)


def verify_adapter(path: Path, *, require: bool) -> None:
    """Check the adapter's files against a manifest: `<dir>/MANIFEST` or the run's `manifest.json`."""
    from tunelab.fsutil import sha256_file

    entries: dict[str, str] = {}
    m = path / "MANIFEST"
    run_manifest = path.parent / "manifest.json"
    if m.is_file():
        data = json.loads(m.read_text())
        for f in data.get("files", []):
            entries[str(f["path"])] = f["sha256"]
    elif run_manifest.is_file():
        data = json.loads(run_manifest.read_text())
        prefix = path.name + "/"
        for f in data.get("outputs", []):
            if str(f.get("path", "")).startswith(prefix):
                entries[str(f["path"])[len(prefix) :]] = f["sha256"]
    if not entries:
        if require:
            raise ModelError("no manifest lists this adapter's files (require_manifest is on)", file=path)
        return
    for rel, digest in entries.items():
        p = path / rel
        if not p.is_file() or sha256_file(p) != digest:
            raise ModelError(f"adapter file {rel} does not match its manifest (changed or damaged)", file=path)


class Limiter:
    """Per-key requests per minute (sliding window, in memory) and tokens per day (from the ledger)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.windows: dict[str, deque[float]] = defaultdict(deque)
        self.lock = threading.Lock()

    def check(self, key: ApiKey, retry_after: int) -> None:
        t = time.time()
        if key.rpm is not None:
            with self.lock:
                w = self.windows[key.id]
                while w and w[0] <= t - 60:
                    w.popleft()
                if len(w) >= key.rpm:
                    wait = max(1, int(60 - (t - w[0])) + 1)
                    raise ApiError(
                        429,
                        f"rate limit reached: {key.rpm} requests per minute",
                        type="rate_limit_exceeded",
                        code="rate_limit_exceeded",
                        headers={"Retry-After": str(wait)},
                    )
                w.append(t)
        if key.tokens_per_day is not None and self.store.tokens_since(key.id, t - 86400) >= key.tokens_per_day:
            raise ApiError(
                429,
                f"token limit reached: {key.tokens_per_day} tokens per day",
                type="rate_limit_exceeded",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(retry_after * 30)},
            )


def create_app(
    cfg: ServeConfig, host: Host | None = None, store: Store | None = None, *, engine_thread: bool = True
) -> Any:
    """The FastAPI app. With `engine_thread` the engine decodes in a thread of its own, started with the app;
    without, the caller runs `host.engine.run()` (`tunelab serve` runs it on the main thread: faster, see
    `Engine.run`)."""
    for g in [cfg.guards, *cfg.model_guards.values()]:  # a classifier that cannot load fails now, not per request
        if g.injection.action != "off" and g.injection.classifier:
            load_classifier(g.injection.classifier_model)
    host = host or Host(cfg)
    store = store or Store(cfg.store)
    limiter = Limiter(store)
    metrics = Metrics()
    app = FastAPI(title="tunelab", version="1", description="OpenAI-compatible API served by tunelab")
    app.state.host, app.state.store, app.state.metrics = host, store, metrics

    @app.on_event("startup")
    async def _start() -> None:
        if engine_thread:
            host.engine.start()

    @app.on_event("shutdown")
    async def _stop() -> None:
        host.engine.stop()

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", []) if x != "body"]
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            return error(ApiError(400, "the body is not valid JSON", param=None))
        return error(ApiError(400, f"{'.'.join(loc) or 'body'}: {msg}", param=".".join(loc) or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(ApiError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        return error(ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))

    @app.middleware("http")
    async def _limit_body(request: Request, call_next: Any) -> Any:
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > cfg.max_body_bytes):
            return error(ApiError(413, f"request body larger than {cfg.max_body_bytes} bytes"))
        return await call_next(request)

    def authorise(request: Request, model: str | None = None) -> ApiKey:
        h = request.headers.get("authorization", "")
        if not h.lower().startswith("bearer "):
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>", code="invalid_api_key")
        key = store.verify(h[7:].strip())
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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": host.name,
            "decoder": host.runner.decoder,  # lean | hf
            "weights": host.runner.weights,  # fp32 | fp16 | bf16 | int8 (`quantize`)
            "kernel": host.runner.kernel,  # mkl | fbgemm | onednn | tunelab | tunelab+onednn | torch
            "running": host.engine.running,
            "waiting": host.engine.waiting.qsize(),
        }

    @app.get("/metrics")
    async def prom() -> PlainTextResponse:
        return PlainTextResponse(metrics.prometheus(host.engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "tunelab"} for m in host.models()],
        }

    async def run(request: Request, body: ChatRequest | CompletionRequest, chat: bool) -> Any:
        t0 = time.perf_counter()
        key = authorise(request, body.model)
        rid = new_id("chatcmpl" if chat else "cmpl")
        status, pt, ct = 200, 0, 0
        decisions: list[Decision] = []
        gcfg = cfg.guards
        try:
            if body.model not in host.models():
                raise ApiError(
                    404,
                    f"the model {body.model!r} does not exist (see /v1/models)",
                    param="model",
                    code="model_not_found",
                    type="invalid_request_error",
                )
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
            adapter = body.model if body.model != host.name else None
            if adapter:
                await asyncio.to_thread(host.ensure_adapter, adapter)
            out_filter = (lambda text: guard_output(text, gcfg, decisions)) if output_guarded(gcfg) else None
            streams = [Stream(host, body, prompt, max_new, adapter, i, out_filter) for i in range(body.n)]
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
                metrics.requests[(body.model, status)] += 1
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
            metrics.requests[(body.model, st)] += 1
            metrics.prompt_tokens += pt * len(streams)
            metrics.completion_tokens += completion
            metrics.latency_sum += time.perf_counter() - t0
            metrics.latency_count += 1
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
            return StreamingResponse(
                sse(request, body, streams, rid, chat, pt, finish),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Request-Id": rid},
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
        for i, (text, reason) in enumerate(results):
            if chat:
                choices.append(
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": reason,
                        "logprobs": None,
                    }
                )
            else:
                choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
        return {
            "id": rid,
            "object": obj,
            "created": now(),
            "model": body.model,
            "choices": choices,
            "usage": usage(pt * len(streams), ct),
            "system_fingerprint": f"tunelab-{host.name}",
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatRequest) -> Any:
        return await run(request, body, True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        return await run(request, body, False)

    return app


def guard_input(body: ChatRequest | CompletionRequest, cfg: GuardConfig, decisions: list[Decision]) -> bool:
    """Run the input guards on the user-supplied text (user turns, or the prompt), redacting in place."""
    blocked = False
    if isinstance(body, ChatRequest):
        for m in body.messages:
            if m.role != "user":
                continue
            text, ds, b = check_input(m.text(), cfg)
            if text != m.text():
                m.content = text
            decisions.extend(ds)
            blocked = blocked or b
    else:
        text, ds, blocked = check_input(body.prompt_text(), cfg)
        body.prompt = text
        decisions.extend(ds)
    return blocked


def output_guarded(cfg: GuardConfig) -> bool:
    return cfg.pii_output.action != "off" or cfg.moderation_output.action != "off"


def guard_output(text: str, cfg: GuardConfig, decisions: list[Decision]) -> tuple[str, bool]:
    out, ds, blocked = check_output(text, cfg)
    for d in ds:  # one decision per guard and request, however often the text was checked while streaming
        if not any(x.guard == d.guard and x.detail == d.detail for x in decisions):
            decisions.append(d)
    return out, blocked


def prompt_ids(host: Host, body: ChatRequest | CompletionRequest, chat: bool) -> list[int]:
    from tunelab.models.chat import encode_prompt

    if isinstance(body, ChatRequest):
        msgs = []
        for m in body.messages:
            role = "system" if m.role == "developer" else m.role
            if role == "tool":
                raise ApiError(400, "tool messages are not supported", param="messages")
            msgs.append({"role": role, "content": m.text()})
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
    ):
        self.host, self.index = host, index
        self.out_filter = out_filter  # text -> (guarded text, blocked?)
        self.loop = asyncio.get_running_loop()
        self.box = Mailbox.of(self.loop)
        self.q: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.count = 0
        self.stops = body.stops()
        seed = body.seed + index if body.seed is not None else None
        self.req = GenRequest(
            prompt=prompt,
            max_tokens=max_new,
            on_token=self._on_token,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=seed,
            adapter=adapter,
        )

    def _on_token(self, tok: int | None, reason: str | None) -> None:
        self.box.post(self.q, (tok, reason))

    def submit(self) -> None:
        self.host.engine.submit(self.req)

    def cancel(self) -> None:
        self.req.cancelled.set()

    def _view(self, text: str) -> tuple[str, bool]:
        return self.out_filter(text) if self.out_filter else (text, False)

    async def deltas(self) -> AsyncIterator[tuple[str, str | None]]:
        """(new text, finish reason or None); the last item carries the reason. With output guards the text
        is checked as a whole each time and the last HOLD characters are held back, so a finding that is
        still being written is redacted before any of it is sent."""
        hold = HOLD if self.out_filter else 0
        while True:
            tok, reason = await self.q.get()
            if tok is not None:
                self.count += 1
                self.ids.append(tok)
                raw = str(self.host.tok.decode(self.ids, skip_special_tokens=True))
                cut = _first_stop(raw, self.stops)
                if cut is not None:
                    self.cancel()
                    view, blocked = self._view(raw[:cut])
                    yield ("", "content_filter") if blocked else (view[self.sent :], "stop")
                    self.text, self.sent = view, len(view)
                    return
                view, blocked = self._view(raw)
                if blocked:
                    self.cancel()
                    yield "", "content_filter"
                    return
                safe = len(view) - max(hold, _held(view, self.stops))
                if safe > self.sent and view.startswith(self.text[: self.sent]):
                    delta = view[self.sent : safe]
                    self.sent = safe
                    self.text = view
                    yield delta, None
                continue
            if reason and reason.startswith("error"):
                raise RuntimeError(reason)
            view, blocked = self._view(str(self.host.tok.decode(self.ids, skip_special_tokens=True)))
            if blocked:
                yield "", "content_filter"
                return
            self.text = view
            yield view[self.sent :], "length" if reason == "length" else "stop"
            self.sent = len(view)
            return

    async def collect(self) -> tuple[str, str]:
        parts, reason = [], "stop"
        async for d, r in self.deltas():
            parts.append(d)
            if r:
                reason = r
        return "".join(parts), reason


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

    merged: asyncio.Queue[tuple[int, str, str | None] | None] = asyncio.Queue()

    async def pump(s: Stream) -> None:
        try:
            async for d, r in s.deltas():
                await merged.put((s.index, d, r))
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
            i, d, r = item
            if chat:
                yield chunk([{"index": i, "delta": {"content": d} if d else {}, "finish_reason": r, "logprobs": None}])
            else:
                yield chunk([{"index": i, "text": d, "finish_reason": r, "logprobs": None}])
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


def load_serve_config(path: Path | None, **overrides: Any) -> ServeConfig:
    import yaml
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError("no such file", file=path, field="--config")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", file=path) from None
        base = path.parent
        data["adapters"] = {
            k: str((base / v) if not Path(v).is_absolute() else v) for k, v in (data.get("adapters") or {}).items()
        }
        guard_sets = [data.get("guards"), *(data.get("model_guards") or {}).values()]
        for g in guard_sets:  # a classifier file named in the config is relative to the config
            inj = g.get("injection") if isinstance(g, dict) else None
            if isinstance(inj, dict) and isinstance(inj.get("classifier_model"), str):
                inj["classifier_model"] = str(base / inj["classifier_model"])
    for k, v in overrides.items():
        if v is None or v == {}:
            continue
        if k == "adapters":
            data["adapters"] = {**data.get("adapters", {}), **v}
        else:
            data[k] = v
    try:
        return ServeConfig(**data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(err["msg"], file=path, field=".".join(str(x) for x in err["loc"])) from None
