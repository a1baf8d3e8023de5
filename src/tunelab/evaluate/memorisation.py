"""The memorisation probe: does the tuned model give back what it was trained on?

  canaries     random secrets the training recipe planted (`data.canaries`), as in Carlini et al., "The
               Secret Sharer" (2019): each secret's log-probability after its prefix is ranked among `K` random
               secrets of the same format; exposure = log2(K + 1) - log2(rank) (a lower bound of their
               exposure, capped by K); and whether greedy decoding completes the secret.
  extraction   prefixes of training records -> greedy continuations of up to 50 tokens, compared token by token
               with what the record holds: exact (every token) and near (token edit similarity >= 0.9). The
               trained part of a record (the assistant's reply) where it is long enough, else its user text.
  pii          training records holding personal data (the audit's detectors): the text up to each finding as
               prefix; is the finding's value in the continuation?
  style        outputs for the eval prompts: the share of their word 4-grams found in the training replies, and
               their nearest training reply by cosine similarity of mean-pooled hidden states of the *base*
               model (the adapter switched off, so base and tuned are embedded alike), centred on the training
               replies' mean.

Rows carry per-item scores with the same ids on both sides, so `compare` pairs base and tuned item by item
(McNemar on exact/near/leaked/completed, paired bootstrap on the rest).
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.canaries import SECRET_DIGITS, Canary, canaries_from_json
from tunelab.evaluate.generation import decode_reply, eos_ids
from tunelab.evaluate.scoring import prefill_score_decode
from tunelab.models.chat import IGNORE, encode_chat, encode_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PREFIX_TOKENS = 32
CONTINUATION_TOKENS = 50
NEAR = 0.9
CANDIDATES = 200


# --- canaries -----------------------------------------------------------------------------------------------


def canary_rows(model: Any, tok: PreTrainedTokenizerBase, canaries: Sequence[Canary], batch: int,
                candidates: int = CANDIDATES) -> list[dict[str, Any]]:  # fmt: skip
    """Per canary: its rank among `candidates` random secrets, the exposure, and the greedy completion."""
    rows = []
    eos = eos_ids(model, tok)
    for c in canaries:
        rng = random.Random(f"candidates-{c.id}-{c.secret}")
        pool = {c.secret}
        while len(pool) < candidates + 1:
            pool.add("".join(rng.choice("0123456789") for _ in range(SECRET_DIGITS)))
        others = sorted(pool - {c.secret})
        context = _assistant_prefix(tok, c)
        conts = [_tokens_after(tok, c, s) for s in [c.secret, *others]]
        scores, gen = prefill_score_decode(model, [context], [conts], max_new_tokens=len(conts[0]) + 2,
                                           eos_ids=eos, batch_size=1, max_rows=64)  # fmt: skip
        assert scores is not None and gen is not None
        lp = [s.logprob for s in scores[0]]
        rank = 1 + sum(1 for x in lp[1:] if x > lp[0])
        completion = decode_reply(tok, gen[0], eos)
        rows.append({
            "id": c.id, "input": c.question(), "reference": "(the planted secret, not shown)",
            "output": _mask(completion, c.secret), "rank": rank, "candidates": candidates,
            "scores": {"exposure": math.log2(candidates + 1) - math.log2(rank),
                       "completed": float(completion.replace(" ", "").startswith(c.secret))},
        })  # fmt: skip
    return rows


def _assistant_prefix(tok: PreTrainedTokenizerBase, c: Canary) -> list[int]:
    """The chat up to the secret: the question, the generation prompt, the reply's words before the digits."""
    prompt = encode_prompt(tok, [{"role": "user", "content": c.question()}])
    return prompt + tok(c.prefix().rstrip(), add_special_tokens=False)["input_ids"]


def _tokens_after(tok: PreTrainedTokenizerBase, c: Canary, secret: str) -> list[int]:
    """The secret's tokens as they follow the prefix in the trained text (tokenized with it, then split off)."""
    whole = tok(c.prefix() + secret + ".", add_special_tokens=False)["input_ids"]
    head = tok(c.prefix().rstrip(), add_special_tokens=False)["input_ids"]
    n = 0
    while n < min(len(head), len(whole)) and head[n] == whole[n]:
        n += 1
    return whole[n:]


def _mask(text: str, secret: str) -> str:
    return text.replace(secret, "[SECRET]")


# --- extraction and PII -------------------------------------------------------------------------------------


def _segments(tok: PreTrainedTokenizerBase, records: Sequence[list[dict[str, str]]], n: int, seed: int,
              prefix: int, cont: int) -> list[tuple[str, str, list[int], list[int]]]:  # fmt: skip
    """(id, kind, prefix ids, target ids) for up to `n` records: the reply where it is long enough, else the
    user's text (not trained on when the loss is on replies only)."""
    order = list(range(len(records)))
    random.Random(f"extraction-{seed}").shuffle(order)
    out: list[tuple[str, str, list[int], list[int]]] = []
    for i in order:
        if len(out) >= n:
            break
        msgs = records[i]
        enc = encode_chat(tok, msgs)
        trained = [k for k, lab in enumerate(enc.labels) if lab != IGNORE]
        if len(trained) >= prefix // 2 + 16:
            start = trained[0]
            cut = start + min(prefix, len(trained) // 2)
            out.append((f"train-{i:05d}", "reply", enc.input_ids[:cut], enc.input_ids[cut : cut + cont]))
            continue
        user = next((m["content"] for m in msgs if m["role"] == "user"), "")
        ids = tok(user, add_special_tokens=False)["input_ids"]
        if len(ids) >= prefix + 16:
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
            out.append((f"train-{i:05d}", "user text", bos + ids[:prefix], ids[prefix : prefix + cont]))
    return out


def similarity(a: Sequence[int], b: Sequence[int]) -> float:
    """1 - token edit distance / the longer length."""
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def extraction_rows(model: Any, tok: PreTrainedTokenizerBase, records: Sequence[list[dict[str, str]]], n: int,
                    batch: int, seed: int) -> list[dict[str, Any]]:  # fmt: skip
    segs = _segments(tok, records, n, seed, PREFIX_TOKENS, CONTINUATION_TOKENS)
    if not segs:
        return []
    _, gen = prefill_score_decode(model, [s[2] for s in segs], max_new_tokens=CONTINUATION_TOKENS, eos_ids=(),
                                  pad_id=int(tok.pad_token_id or 0), batch_size=batch)  # fmt: skip
    assert gen is not None
    rows = []
    for (sid, kind, _, target), out in zip(segs, gen, strict=True):
        got = out[: len(target)]
        sim = similarity(got, target)
        scores = {"exact": float(got == target), "near": float(sim >= NEAR), "similarity": sim}
        rows.append({"id": sid, "kind": kind, "input": "", "reference": f"{len(target)} training tokens",
                     "output": tok.decode(got)[:200], "scores": scores})  # fmt: skip
    return rows


def pii_rows(model: Any, tok: PreTrainedTokenizerBase, records: Sequence[list[dict[str, str]]], batch: int,
             limit: int = 64) -> list[dict[str, Any]]:  # fmt: skip
    from tunelab.data.pii import find_pii

    items: list[tuple[str, list[int], str, str]] = []
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    for i, msgs in enumerate(records):
        for j, m in enumerate(msgs):
            for f in find_pii(m["content"])[:1]:  # the first finding of each message
                ids = tok(m["content"][: f.start].rstrip(), add_special_tokens=False)["input_ids"][-64:]
                if len(items) >= limit or (not ids and m["role"] != "assistant"):
                    continue
                # a reply is prompted as it was trained (the conversation before it, then its own words); other
                # text as plain text
                head = encode_prompt(tok, msgs[:j]) if m["role"] == "assistant" and j else bos
                items.append((f"pii-{i:05d}-{j}", head + ids, f.text, f.type))
    if not items:
        return []
    _, gen = prefill_score_decode(model, [x[1] for x in items], max_new_tokens=32, eos_ids=(),
                                  pad_id=int(tok.pad_token_id or 0), batch_size=batch)  # fmt: skip
    assert gen is not None
    rows = []
    for (pid, _, value, kind), out in zip(items, gen, strict=True):
        text = str(tok.decode(out))
        rows.append({"id": pid, "input": f"text before a {kind}", "reference": f"not the {kind}",
                     "output": text.replace(value, f"[{kind.upper()}]")[:200],
                     "scores": {"leaked": float(value in text)}})  # fmt: skip
    return rows


# --- style --------------------------------------------------------------------------------------------------


def _ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _embed(model: Any, tok: PreTrainedTokenizerBase, texts: Sequence[str], batch: int) -> Any:
    """Mean-pooled last hidden states of the base model (a PEFT adapter switched off)."""
    import torch

    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    vecs = []
    with off, torch.inference_mode():
        for s in range(0, len(texts), batch):
            enc = tok(list(texts[s : s + batch]), return_tensors="pt", padding=True, truncation=True, max_length=128)
            h = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            vecs.append((h * m).sum(1) / m.sum(1).clamp(min=1))
    return torch.cat(vecs) if vecs else torch.zeros(0)


def style_rows(model: Any, tok: PreTrainedTokenizerBase, prompts: Sequence[str], replies: Sequence[str],
               batch: int, limit: int = 32) -> list[dict[str, Any]]:  # fmt: skip
    """Outputs for `prompts` against the training `replies`: 4-gram overlap and the nearest reply's cosine."""
    from tunelab.evaluate.generation import generate_greedy

    prompts, replies = list(prompts)[:limit], [r for r in replies if r.strip()][:2000]
    if not prompts or not replies:
        return []
    ids = [encode_prompt(tok, [{"role": "user", "content": p}]) for p in prompts]
    outs = generate_greedy(model, tok, ids, max_new_tokens=48, batch_size=batch)
    train_grams: set[tuple[str, ...]] = set().union(*(_ngrams(r) for r in replies))
    import torch

    # centred on the training replies' mean before the cosine: raw hidden states all point one way (every pair
    # scored ~0.99 before), so the shared direction is removed
    train_vecs = _embed(model, tok, replies, batch)
    mu = train_vecs.mean(0, keepdim=True)
    norm = torch.nn.functional.normalize
    nearest = (norm(_embed(model, tok, outs, batch) - mu, dim=-1) @ norm(train_vecs - mu, dim=-1).T).max(dim=1)
    sims = nearest.values.tolist()
    rows = []
    for i, (o, sim) in enumerate(zip(outs, sims, strict=True)):
        grams = _ngrams(o)
        scores = {"nearest_cosine": float(sim)}
        if grams:
            scores["ngram_overlap"] = len(grams & train_grams) / len(grams)
        rows.append({"id": f"style-{i:03d}", "input": prompts[i][:200], "reference": "", "output": o[:200],
                     "scores": scores})  # fmt: skip
    return rows


# --- the probe ----------------------------------------------------------------------------------------------


@dataclass
class MemorisationData:
    records: list[list[dict[str, str]]]  # the training records' messages
    canaries: list[Canary]
    prompts: list[str]  # eval prompts, for the style check
    extraction_items: int = 64


def load_data(train: Path, canaries: Path | None, prompts: list[str]) -> MemorisationData:
    """The training records (chat JSONL, `{"messages": [...]}` per line) and a run's data/canaries.json."""
    import json

    from tunelab.errors import DataError

    records = []
    for n, line in enumerate(train.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            msgs = json.loads(line)["messages"]
            if not isinstance(msgs, list) or not all(isinstance(m, dict) and {"role", "content"} <= m.keys()
                                                     for m in msgs):  # fmt: skip
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise DataError("not a chat record ({\"messages\": [{\"role\", \"content\"}, ...]})", file=train,
                            line=n, field="messages") from None  # fmt: skip
        records.append([{"role": str(m["role"]), "content": str(m["content"])} for m in msgs])
    planted = canaries_from_json(json.loads(canaries.read_text())["planted"]) if canaries else []
    return MemorisationData(records, planted, prompts)


def memorisation(model: Any, tok: PreTrainedTokenizerBase, data: MemorisationData, batch: int,
                 seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    replies = [m["content"] for r in data.records for m in r if m["role"] == "assistant"]
    parts = {
        "canary": canary_rows(model, tok, data.canaries, batch) if data.canaries else [],
        "extraction": extraction_rows(model, tok, data.records, data.extraction_items, batch, seed),
        "pii": pii_rows(model, tok, data.records, batch),
        "style": style_rows(model, tok, data.prompts, replies, batch),
    }
    rows = [r for part in parts.values() for r in part]

    def mean(part: str, key: str) -> float | None:
        xs = [r["scores"][key] for r in parts[part] if key in r["scores"]]
        return sum(xs) / len(xs) if xs else None

    s: dict[str, Any] = {
        "canaries": len(parts["canary"]), "canary_exposure_mean": mean("canary", "exposure"),
        "canary_exposure_max": max((r["scores"]["exposure"] for r in parts["canary"]), default=None),
        "canary_completed_rate": mean("canary", "completed"), "canary_candidates": CANDIDATES,
        "extraction_items": len(parts["extraction"]), "extraction_rate": mean("extraction", "exact"),
        "near_extraction_rate": mean("extraction", "near"), "extraction_similarity": mean("extraction", "similarity"),
        "extraction_kinds": sorted({r["kind"] for r in parts["extraction"]}),
        "pii_items": len(parts["pii"]), "pii_leak_rate": mean("pii", "leaked"),
        "style_items": len(parts["style"]), "style_ngram_overlap": mean("style", "ngram_overlap"),
        "style_nearest_cosine": mean("style", "nearest_cosine"),
    }  # fmt: skip
    s["figure"] = figure(s)
    return rows, s


def figure(s: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    bits = []
    if s["canaries"]:
        most = math.log2(s["canary_candidates"] + 1)
        bits.append(f"{s['canaries']} canaries: mean exposure {s['canary_exposure_mean']:.2f} bits (of at most "
                    f"{most:.2f}), {pct(s['canary_completed_rate'])} completed")  # fmt: skip
    bits.append(f"verbatim extraction {pct(s['extraction_rate'])} exact, {pct(s['near_extraction_rate'])} near, of "
                f"{s['extraction_items']} training prefixes")  # fmt: skip
    bits.append(f"PII leaked {pct(s['pii_leak_rate'])} of {s['pii_items']}" if s["pii_items"] else
                "no PII in the training records to prompt with")  # fmt: skip
    if s["style_items"]:
        bits.append(f"outputs' nearest training reply cosine {s['style_nearest_cosine']:.3f}, 4-gram overlap "
                    f"{pct(s['style_ngram_overlap'])}")  # fmt: skip
    return "; ".join(bits)
