"""`tunelab serve --backend vllm`: vLLM decodes on the GPU; everything in front of it stays tunelab's.

The HTTP API, keys, limits, guards, chat templates, the context check, adapter manifests and the usage ledger
are the same code as with tunelab's own engine: only `Host.engine` changes. `VLLMEngine` has the engine's
interface (a bounded waiting queue, `submit`, one `on_token` call per token and one at the end, cancellation)
and hands the requests to vLLM's `LLMEngine` (continuous batching with paged attention), one `step()` per loop:
prompts go in as token ids (tunelab has already applied the chat template and counted them), results come back
as token deltas (`RequestOutputKind.DELTA`, no detokenising in vLLM), adapters as `LoRARequest`s (vLLM keeps
`max_loras` of them on the GPU and reloads an evicted one from its directory).

Written against vLLM 0.34's `vllm.LLMEngine` (`add_request(id, TokensPrompt, SamplingParams, lora_request=)`,
`step() -> [RequestOutput]`, `abort_request([id])`, `remove_lora(int_id)`); `EngineArgs` settings beyond the
ones set here come from serve.yaml's `vllm:` mapping (e.g. `gpu_memory_utilization`, `dtype`,
`tensor_parallel_size`). vLLM is not a dependency: install it on the GPU machine (`pip install vllm`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, ModelError
from tunelab.serve.engine import Engine, GenRequest
from tunelab.serve.logprobs import FLOOR, TokenLogprob

_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed `max_lora_rank` values


@dataclass
class _Live:
    req: GenRequest
    rid: str


class VLLMAdapters:
    """The runner's adapter side for vLLM: a name maps to a `LoRARequest` that vLLM loads on first use."""

    decoder = "vllm"
    kernel = "vllm"

    def __init__(self, llm: Any, weights: str) -> None:
        self.llm = llm
        self.weights = weights
        self.requests: dict[str, Any] = {}
        self._ids = itertools.count(1)

    def load_adapter(self, path: Path, name: str) -> None:
        from vllm.lora.request import LoRARequest

        self.requests[name] = LoRARequest(name, next(self._ids), str(path))

    def delete_adapter(self, name: str) -> None:
        req = self.requests.pop(name, None)
        if req is not None:
            self.llm.remove_lora(req.lora_int_id)

    def reset(self) -> None:
        """After a failed step: nothing of tunelab's to reset (the engine aborts its requests)."""


class VLLMEngine(Engine):
    """tunelab's engine interface over a vLLM `LLMEngine` (see the module's docstring)."""

    def __init__(self, llm: Any, adapters: VLLMAdapters, *, max_batch: int, max_queue: int,
                 eos_ids: frozenset[int]) -> None:  # fmt: skip
        super().__init__(None, max_batch=max_batch, max_queue=max_queue, eos_ids=eos_ids, runner=adapters)
        self.llm = llm
        self.adapters = adapters
        self.rows: list[_Live] = []  # type: ignore[assignment]  # what Host.ensure_adapter reads: .req.adapter
        self._ids = itertools.count()

    def _admit(self) -> None:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        while len(self.rows) < self.max_batch and (r := self._next_waiting()) is not None:
            rid = f"tunelab-{next(self._ids)}"
            r.admitted = time.perf_counter()
            params = SamplingParams(
                max_tokens=r.max_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                seed=r.seed,
                logit_bias=r.logit_bias,
                presence_penalty=r.presence_penalty,
                frequency_penalty=r.frequency_penalty,
                logprobs=r.logprobs,
                stop_token_ids=sorted(r.stop_ids) or None,
                output_kind=RequestOutputKind.DELTA,
                detokenize=False,
            )
            lora = self.adapters.requests.get(r.adapter) if r.adapter else None
            try:
                self.llm.add_request(rid, TokensPrompt(prompt_token_ids=list(r.prompt)), params, lora_request=lora)
            except Exception as e:  # a prompt vLLM refuses fails its own request only
                r.on_token(None, f"error: {type(e).__name__}: {e}")
                continue
            self.rows.append(_Live(r, rid))

    def _step(self) -> None:
        gone = [g for g in self.rows if g.req.cancelled.is_set()]
        if gone:
            self.llm.abort_request([g.rid for g in gone])
            for g in gone:
                g.req.on_token(None, "cancelled")
            self.rows = [g for g in self.rows if g not in gone]
        if not self.rows:
            return
        live = {g.rid: g for g in self.rows}
        done: set[str] = set()
        for out in self.llm.step():
            x = live.get(out.request_id)
            if x is None:
                continue
            comp = out.outputs[0]
            ended = None
            lps = comp.logprobs if x.req.logprobs is not None else None
            for j, tok in enumerate(comp.token_ids):
                x.req.generated += 1
                self.tokens_out += 1
                if tok in self.eos_ids or tok in x.req.stop_ids:  # ends the reply, is not part of it
                    ended = "stop"
                    break
                if lps is not None:
                    x.req.token_logprobs.append(_entry(int(tok), lps[j], x.req.logprobs or 0))
                x.req.on_token(int(tok), None)
            if ended and not out.finished:
                self.llm.abort_request([x.rid])
            if ended or out.finished:
                reason = ended or {"length": "length", "stop": "stop"}.get(str(comp.finish_reason))
                x.req.on_token(None, reason or f"error: vLLM finished with {comp.finish_reason}")
                done.add(x.rid)
        self.rows = [g for g in self.rows if g.rid not in done]
        self.steps += 1

    def _fail_all(self, why: str) -> None:
        with contextlib.suppress(Exception):  # vLLM itself failed: its requests are failed below all the same
            self.llm.abort_request([x.rid for x in self.rows])
        super()._fail_all(why)


def lora_rank(adapters: dict[str, Path]) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds every adapter's rank `r`."""
    r = 8
    for name, path in adapters.items():
        try:
            r = max(r, int(json.loads((Path(path) / "adapter_config.json").read_text())["r"]))
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"adapter {name!r}: unreadable adapter_config.json ({e})", file=path) from None
    for allowed in _LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ModelError(f"LoRA rank {r} is above vLLM's largest ({_LORA_RANKS[-1]})", field="adapters")


def build_llm(path: Path, *, context: int, max_batch: int, adapters: dict[str, Path], max_loras: int,
              extra: dict[str, Any]) -> Any:  # fmt: skip
    """vLLM's engine for the checkpoint at `path`; ConfigError when vLLM or a GPU is missing."""
    try:
        import vllm
    except ImportError:
        raise ConfigError("--backend vllm needs vLLM installed (pip install vllm) on a GPU machine",
                          field="backend") from None  # fmt: skip
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--backend vllm needs a GPU; none is visible (use the default backend)", field="backend")
    args: dict[str, Any] = {"model": str(path), "max_model_len": context, "max_num_seqs": max_batch, "seed": 0}
    if adapters:
        args.update(enable_lora=True, max_loras=max_loras, max_lora_rank=lora_rank(adapters))
    args.update(extra)
    try:
        return vllm.LLMEngine.from_engine_args(vllm.EngineArgs(**args))
    except TypeError as e:  # an unknown key under `vllm:`
        raise ConfigError(f"vLLM's EngineArgs: {e}", field="vllm") from None


def _entry(tok: int, got: dict[int, Any], k: int) -> TokenLogprob:
    """vLLM's log-probabilities of one position (token id -> Logprob(logprob, rank): the k best and the sampled
    one) as tunelab's entry."""
    best = sorted(((int(t), max(FLOOR, float(v.logprob))) for t, v in got.items()), key=lambda tv: -tv[1])[:k]
    return TokenLogprob(tok, max(FLOOR, float(got[tok].logprob)), tuple(best))
