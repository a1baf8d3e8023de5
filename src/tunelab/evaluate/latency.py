"""What one user of the model waits: time to first token and decoding speed of a request served alone.

A lean greedy loop (prefill, then one token per step on the KV cache) timed around each step, so the
first token's time is measured, not inferred from a whole `generate` call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.evaluate.metrics import percentile
from tunelab.evaluate.scoring import _cache_kw, _out_cache, base_model


@dataclass(frozen=True)
class Timing:
    ttft_s: float  # prompt in → first token out
    total_s: float
    new_tokens: int

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, per second of decoding (nan when only one token came)."""
        dt = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / dt if self.new_tokens > 1 and dt > 0 else float("nan")


def time_request(model: Any, prompt: list[int], *, max_new_tokens: int, eos: Sequence[int] = ()) -> Timing:
    import torch

    base = base_model(model)
    kw = _cache_kw(base)
    stop = set(eos)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = base(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
        nxt = int(out.logits[0, -1].argmax())
        ttft = time.perf_counter() - t0
        n = 1
        cache = _out_cache(out)
        while n < max_new_tokens and nxt not in stop:
            out = base(input_ids=torch.tensor([[nxt]]), use_cache=True, **{kw: cache})
            cache = _out_cache(out)
            nxt = int(out.logits[0, -1].argmax())
            n += 1
    return Timing(ttft, time.perf_counter() - t0, n)


def latency_summary(timings: Sequence[Timing]) -> dict[str, float | int]:
    """Percentiles over requests. Decoding speed is given as time per output token (after the first), so that
    p95 is the slow tail like every other latency here; tokens_per_s_p50 is its median as a rate."""
    ttft = [t.ttft_s for t in timings]
    tpot = [1 / t.decode_tokens_per_s for t in timings if t.new_tokens > 1 and t.decode_tokens_per_s > 0]
    total = [t.total_s for t in timings]
    med = percentile(tpot, 50)
    return {
        "samples": len(timings),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "request_p50_s": percentile(total, 50),
        "request_p95_s": percentile(total, 95),
        "tpot_p50_s": med,
        "tpot_p95_s": percentile(tpot, 95),
        "tokens_per_s_p50": 1 / med if med > 0 else 0.0,
    }
