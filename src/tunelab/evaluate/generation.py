"""Batched greedy generation: one left-padded prefill per batch (prompts sorted by length), then a lean
decode loop on the KV cache; the same pass can also score answer candidates (`prefill_score_decode`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tunelab.evaluate.scoring import ChoiceScore, base_model, prefill_score_decode

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def eos_ids(model: Any, tok: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a reply: the tokenizer's EOS and the model's generation-config EOS ids."""
    return eos_ids_of(tok, getattr(base_model(model), "generation_config", None))


def eos_ids_of(tok: PreTrainedTokenizerBase, gc: Any) -> list[int]:
    """The tokenizer's EOS and those of a generation config (None: none), without a loaded model."""
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    e = getattr(gc, "eos_token_id", None) if gc is not None else None
    for x in e if isinstance(e, list | tuple) else [e]:
        if x is not None:
            ids.add(int(x))
    return sorted(ids)


def decode_reply(tok: PreTrainedTokenizerBase, ids: list[int], eos: Sequence[int]) -> str:
    cut = next((k for k, t in enumerate(ids) if t in eos), len(ids))
    return str(tok.decode(ids[:cut], skip_special_tokens=True)).strip()


def generate_and_score(
    model: Any,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]] | None,
    *,
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[str], list[list[ChoiceScore]] | None]:
    """Greedy replies (special tokens dropped) and, when given, the scores of candidate continuations."""
    eos = eos_ids(model, tok)
    scores, gen = prefill_score_decode(
        model,
        prompts,
        continuations,
        max_new_tokens=max_new_tokens,
        eos_ids=eos,
        pad_id=int(tok.pad_token_id) if tok.pad_token_id is not None else 0,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    assert gen is not None
    return [decode_reply(tok, g, eos) for g in gen], scores


def generate_greedy(
    model: Any,
    tok: PreTrainedTokenizerBase,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Decoded continuations (special tokens dropped), in the order of `prompts`."""
    texts, _ = generate_and_score(
        model, tok, prompts, None, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch
    )
    return texts
