"""Per-chunk work of the streaming audit: parse, validate and fingerprint records.

Runs in worker processes (both cores), so it returns only compact results: keys, MinHash signatures,
contamination hits, PII counts and a few numbers per record. The eval index is built once in the parent
and inherited by the workers (fork).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.data.contamination import EvalIndex
from tunelab.data.formats import Record, Rejected
from tunelab.data.minhash import MinHasher
from tunelab.data.pii import find_pii
from tunelab.data.readers import parse_unit
from tunelab.data.text import collapse_ws


@dataclass
class ScanContext:
    fmt: str
    file: str
    prefix: str
    eval_index: EvalIndex | None = None
    keep_records: bool = False


@dataclass
class ChunkResult:
    n: int = 0
    records: list[Record] = field(default_factory=list)  # only when keep_records
    rejected: list[Rejected] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    conv_keys: list[bytes] = field(default_factory=list)
    sigs: np.ndarray | None = None
    contaminated: list[tuple[int, str, str]] = field(default_factory=list)  # (position, kind, eval id)
    pii: Counter[str] = field(default_factory=Counter)
    pii_first: dict[str, str] = field(default_factory=dict)
    with_pii: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    words: list[int] = field(default_factory=list)
    inputs_sample: list[str] = field(default_factory=list)


def non_input(r: Record) -> str:
    """The turns after the input that make a conversation distinct (assistant answers, later user turns)."""
    if r.is_text:
        return ""
    return "\n".join(m["content"] for m in r.messages if m["role"] == "assistant")


def conversation_key(r: Record) -> bytes:
    text = "\x1f".join(f"{m['role']}\x1e{collapse_ws(m['content'].casefold())}" for m in r.messages)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_HASHER: MinHasher | None = None


def _hasher() -> MinHasher:
    global _HASHER
    if _HASHER is None:
        _HASHER = MinHasher()
    return _HASHER


def scan_chunk(ctx: ScanContext, units: list[tuple[int, Any]], sample_every: int = 50) -> ChunkResult:
    out = ChunkResult(n=len(units))
    valid: list[Record] = []
    for line, raw in units:
        r = parse_unit(raw, ctx.fmt, ctx.file, line, ctx.prefix)
        if isinstance(r, Rejected):
            out.rejected.append(r)
        else:
            valid.append(r)
    for r in valid:
        out.ids.append(r.id)
        out.lines.append(r.line)
        out.conv_keys.append(conversation_key(r))
        inp = r.input
        if not r.is_text:
            out.labels[r.answer.strip()[:200]] += 1
        if r.line % sample_every == 0:
            out.inputs_sample.append(inp)
        found = [f for m in r.messages for f in find_pii(m["content"])]
        if found:
            out.with_pii += 1
            for f in found:
                out.pii[f.type] += 1
                out.pii_first.setdefault(f.type, r.id)
    h = _hasher()
    # Words are hashed once per record. One signature (of the whole conversation) serves both the
    # near-duplicate search and the near check against eval items; exact and 13-gram checks use the input.
    input_words = h.word_hashes_many([r.input for r in valid])
    out.words = [len(w) for w in input_words]
    other_words = h.word_hashes_many([non_input(r) for r in valid])
    conv = [np.concatenate([a, b]) for a, b in zip(input_words, other_words, strict=True)]
    out.sigs = h.signatures_of(h.shingles_many(conv))
    if ctx.eval_index is not None:
        out.contaminated = ctx.eval_index.lookup_many([r.input for r in valid], out.sigs, input_words)
    if ctx.keep_records:
        out.records = valid
    return out
