"""Log-likelihood scoring: the shared context is computed once for all of its continuations.

For a multiple-choice item the context (an article, a question) is usually long and the choices short.
Harnesses that score `context + choice` as separate sequences pay for the context once per choice; here a
batch of contexts is run once (left-padded, KV cache kept, only the last position's logits computed),
the cache is indexed out to one row per (item, choice), and only the choices' own tokens are run on top.
A single-token choice costs nothing beyond the context: its log-probability is read off the context's
last logits.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # summed log-probability of the continuation's tokens
    tokens: int
    greedy: bool  # every token was the model's argmax


def base_model(model: Any) -> Any:
    """The transformers model under a PeftModel (with the adapter's layers in it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _cache_kw(base: Any) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); accept both
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _out_cache(out: Any) -> Any:
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else out.past_key_values


def score_continuations(
    model: Any,
    contexts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]],
    *,
    batch_size: int = 8,
    max_rows: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[ChoiceScore]]:
    """For item i, the score of each continuation `continuations[i][j]` given `contexts[i]`."""
    scores, _ = prefill_score_decode(
        model, contexts, continuations, batch_size=batch_size, max_rows=max_rows, on_batch=on_batch
    )
    assert scores is not None
    return scores


def prefill_score_decode(
    model: Any,
    contexts: Sequence[list[int]],
    continuations: Sequence[Sequence[list[int]]] | None = None,
    *,
    max_new_tokens: int = 0,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int = 8,
    max_rows: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[list[ChoiceScore]] | None, list[list[int]] | None]:
    """One prefill per batch of contexts, then (optionally) the continuations scored on its cache and
    (optionally) up to `max_new_tokens` greedy tokens decoded from it: a classifier's constrained answer and
    its free answer for the price of one prompt pass. Returns (scores, generated token ids, EOS included)."""
    import torch

    if continuations is not None:
        if len(contexts) != len(continuations):
            raise ValueError("one list of continuations per context")
        for i, conts in enumerate(continuations):
            if not conts or any(not c for c in conts):
                raise ValueError(f"item {i}: empty continuation")
    if any(not c for c in contexts):
        raise ValueError("empty context")
    base = base_model(model)
    kw = _cache_kw(base)
    scores: list[list[ChoiceScore]] = [[] for _ in contexts]
    generated: list[list[int]] = [[] for _ in contexts]
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))  # little padding, memory peak first
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(contexts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                c = contexts[i]
                ids[r, width - len(c) :] = torch.tensor(c)
                mask[r, width - len(c) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            res = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            last = res.logits[:, -1, :].float()
            cache = _out_cache(res)
            if continuations is not None:
                _score_batch(base, kw, last, cache, mask, idx, continuations, scores, max_rows, keep=max_new_tokens > 0)
            if max_new_tokens > 0:
                for r, toks in enumerate(_decode(base, kw, last, cache, mask, max_new_tokens, set(eos_ids), pad_id)):
                    generated[idx[r]] = toks
            if on_batch:
                on_batch(len(idx))
    return (scores if continuations is not None else None), (generated if max_new_tokens > 0 else None)


def _score_batch(
    base: Any,
    kw: str,
    last: Any,
    cache: Any,
    mask: Any,
    idx: list[int],
    continuations: Sequence[Sequence[list[int]]],
    out: list[list[ChoiceScore]],
    max_rows: int,
    *,
    keep: bool,
) -> None:
    import torch

    first = torch.log_softmax(last, dim=-1)  # [B, V]: predicts every choice's first token
    rows = [(r, i, j) for r, i in enumerate(idx) for j in range(len(continuations[i]))]
    multi = [row for row in rows if len(continuations[row[1]][row[2]]) > 1]
    tails: dict[tuple[int, int], tuple[float, bool]] = {}
    for m in range(0, len(multi), max_rows):
        chunk = multi[m : m + max_rows]
        reuse = len(multi) <= max_rows and not keep  # the cache is needed again: index a copy
        tails.update(_score_tails(base, kw, cache, mask, chunk, continuations, reuse=reuse))
    for r, i, j in rows:
        cont = continuations[i][j]
        lp = float(first[r, cont[0]])
        greedy = int(first[r].argmax()) == cont[0]
        if len(cont) > 1:
            t_lp, t_greedy = tails[(i, j)]
            lp += t_lp
            greedy = greedy and t_greedy
        out[i].append(ChoiceScore(lp, len(cont), greedy))


def _decode(
    base: Any, kw: str, last: Any, cache: Any, mask: Any, max_new_tokens: int, eos: set[int], pad_id: int
) -> list[list[int]]:
    """Greedy tokens per row from a prefilled cache; a row stops at its first EOS (kept in its list)."""
    import torch

    n = last.shape[0]
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    nxt = last.argmax(-1)
    pos = mask.sum(-1, keepdim=True)  # the next position of each row = its real tokens so far
    for step in range(max_new_tokens):
        for r in range(n):
            if not done[r]:
                t = int(nxt[r])
                out[r].append(t)
                done[r] = t in eos
        if all(done) or step == max_new_tokens - 1:
            break
        inp = torch.tensor([[int(nxt[r]) if not done[r] else pad_id] for r in range(n)])
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype)], dim=1)
        res = base(input_ids=inp, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: cache})
        cache = _out_cache(res)
        pos = pos + 1
        nxt = res.logits[:, -1, :].argmax(-1)
    return out


def _score_tails(
    base: Any,
    kw: str,
    cache: Any,
    ctx_mask: Any,
    chunk: list[tuple[int, int, int]],
    continuations: Sequence[Sequence[list[int]]],
    *,
    reuse: bool,
) -> dict[tuple[int, int], tuple[float, bool]]:
    """Tokens 2.. of each continuation in `chunk`, run on a copy of the context cache indexed per row."""
    import copy

    import torch

    rows = [r for r, _, _ in chunk]
    conts = [continuations[i][j] for _, i, j in chunk]
    width = max(len(c) for c in conts) - 1
    ids = torch.zeros((len(chunk), width), dtype=torch.long)
    cmask = torch.zeros((len(chunk), width), dtype=torch.long)
    for k, c in enumerate(conts):
        ids[k, : len(c) - 1] = torch.tensor(c[:-1])
        cmask[k, : len(c) - 1] = 1
    sel = torch.tensor(rows)
    # later chunks need the context cache as it is: index a copy unless this is the only chunk
    rc = cache if reuse else copy.deepcopy(cache)
    rc.batch_select_indices(sel)
    mask = torch.cat([ctx_mask[sel], cmask], dim=1)
    start = ctx_mask[sel].sum(-1, keepdim=True)
    pos = start + torch.arange(width).unsqueeze(0)
    res = base(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{kw: rc})
    logp = torch.log_softmax(res.logits.float(), dim=-1)  # [R, W, V]: position t predicts token t + 1
    out: dict[tuple[int, int], tuple[float, bool]] = {}
    for k, (_, i, j) in enumerate(chunk):
        c = conts[k]
        tgt = torch.tensor(c[1:])
        lp = logp[k, : len(c) - 1]
        out[(i, j)] = (float(lp.gather(-1, tgt.unsqueeze(-1)).sum()), bool((lp.argmax(-1) == tgt).all()))
    return out


def sequence_nll(model: Any, texts: Sequence[list[int]], *, chunk: int = 256) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, predicted tokens) of each token sequence, one sequence at a time
    (no padding), the vocabulary projection a chunk of positions at a time."""
    import torch
    import torch.nn.functional as F

    base = base_model(model)
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    out = []
    with torch.inference_mode():
        for ids in texts:
            if len(ids) < 2:
                out.append((0.0, 0))
                continue
            x = torch.tensor([ids])
            hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[0, :-1]
            tgt = x[0, 1:]
            nll = 0.0
            for s in range(0, len(tgt), chunk):
                logits = head(hidden[s : s + chunk]).float()
                nll += float(F.cross_entropy(logits, tgt[s : s + chunk], reduction="sum"))
            out.append((nll, len(ids) - 1))
    return out


def perplexity(nll: float, tokens: int) -> float:
    return math.exp(nll / tokens) if tokens else float("nan")
