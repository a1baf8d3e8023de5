"""Batched greedy generation: left padding, KV cache, prompts sorted by length to waste little padding."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def generate_greedy(
    model: Any,  # a PreTrainedModel or a PeftModel around one
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded continuations (special tokens dropped), in the order of `prompts`."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    pad = int(tok.pad_token_id)
    eos = tok.eos_token_id
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            p = prompts[i]
            ids[r, width - len(p) :] = torch.tensor(p)
            mask[r, width - len(p) :] = 1
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        for r, i in enumerate(idx):
            out[i] = str(tok.decode(gen[r, width:], skip_special_tokens=True)).strip()
        if on_batch:
            on_batch(len(idx))
    return out


def time_single(model: Any, tok: PreTrainedTokenizerBase, prompt: list[int], max_new_tokens: int) -> float:
    """Wall time of one request served alone (what a user of a one-at-a-time server waits)."""
    t0 = time.perf_counter()
    generate_greedy(model, tok, [prompt], max_new_tokens=max_new_tokens, batch_size=1)
    return time.perf_counter() - t0
