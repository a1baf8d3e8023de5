"""Train/eval contamination of three kinds: the same input (exact), a near-duplicate input (MinHash),
and a shared word 13-gram (the test GPT-3 and later reports used). The eval side is indexed (it is the
small one) and the training records stream past it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tunelab.data.minhash import MinHasher, band_keys, window_hashes
from tunelab.data.text import text_hash

KINDS = ("exact", "near", "ngram13")
BOILERPLATE_SHARE = 0.05
N = 13
_MIX = np.random.default_rng(13).integers(1, 2**63, size=N, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def ngrams_many(words: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per record, the hash of every word 13-gram in order (none for a record shorter than 13 words)."""
    return [g if len(w) >= N else g[:0] for g, w in zip(window_hashes(words, N, _MIX), words, strict=True)]


class KeySet:
    """Membership of 64-bit keys, vectorised: a table on the low bits (about 64 slots per key, at most 2**22)
    filters out most absent keys with one gather, and a binary search over the sorted keys confirms the rest."""

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.unique(keys.astype(np.uint64))
        bits = min(22, max(10, len(self.keys).bit_length() + 6))
        self.mask = np.uint64((1 << bits) - 1)
        self.table = np.zeros(1 << bits, dtype=bool)
        self.table[(self.keys & self.mask).astype(np.intp)] = True

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, x: np.ndarray) -> np.ndarray:
        out = self.table[(x & self.mask).astype(np.intp)]
        maybe = np.flatnonzero(out)
        if len(maybe):
            at = np.minimum(np.searchsorted(self.keys, x[maybe]), len(self.keys) - 1)
            out[maybe] = self.keys[at] == x[maybe]
        return out


class EvalIndex:
    """Everything a training record is checked against: eval inputs by hash, 13-grams, MinHash LSH."""

    def __init__(
        self, items: Sequence[tuple[str, str]], near_threshold: float = 0.8, answers: Sequence[str] | None = None
    ) -> None:
        """items: (id, input). The near check compares whole conversations: input words then `answers`."""
        self.near_threshold = near_threshold
        self.hasher = MinHasher()
        self.ids = [eid for eid, _ in items]
        self.exact: dict[str, list[str]] = defaultdict(list)
        self.grams: dict[int, list[str]] = {}
        input_words = self.hasher.word_hashes_many([t for _, t in items])  # hashed once, used twice below
        eval_grams = ngrams_many(input_words)
        share: dict[int, int] = defaultdict(int)
        for gl in eval_grams:
            for g in set(gl.tolist()):
                share[g] += 1
        # An n-gram shared by many eval items is template (an instruction, a header), not leaked content;
        # so is every n-gram that touches a word of it ("... said. Which topic is this article: ...").
        limit = max(2, int(BOILERPLATE_SHARE * len(items)))
        for (eid, text), gl in zip(items, eval_grams, strict=True):
            self.exact[text_hash(text)].append(eid)
            if len(gl) == 0:
                continue
            boiler = np.fromiter((share[g] >= limit for g in gl.tolist()), dtype=bool, count=len(gl))
            # an n-gram is clean when no boilerplate n-gram overlaps it (starts within N-1 positions)
            window = np.convolve(boiler.astype(np.int32), np.ones(2 * N - 1, dtype=np.int32), mode="full")
            near_boiler = window[N - 1 : N - 1 + len(gl)] > 0
            for g in gl[~near_boiler].tolist():
                self.grams.setdefault(g, []).append(eid)
        self._gram_keys = KeySet(np.array(list(self.grams), dtype=np.uint64))
        words = input_words
        if answers is not None:
            extra = self.hasher.word_hashes_many(list(answers))
            words = [np.concatenate([w, x]) for w, x in zip(words, extra, strict=True)]
        self._sigs = self.hasher.signatures_of(self.hasher.shingles_many(words))
        self._bands = band_keys(self._sigs) if len(self._sigs) else np.zeros((0, 32), dtype=np.uint64)
        self._band_sets = [KeySet(self._bands[:, b]) for b in range(self._bands.shape[1])]

    def lookup_many(
        self, texts: Sequence[str], sigs: np.ndarray, words: Sequence[np.ndarray]
    ) -> list[tuple[int, str, str]]:
        """(position, kind, eval id) for every way each text leaks an eval item; vectorised per batch."""
        hits: list[tuple[int, str, str]] = []
        for i, t in enumerate(texts):
            hits += [(i, "exact", eid) for eid in self.exact.get(text_hash(t), ())]
        if len(self._sigs):
            keys = band_keys(sigs)
            cand = np.zeros(len(texts), dtype=bool)
            for b, col in enumerate(self._band_sets):
                cand |= col.contains(keys[:, b])
            for i in np.flatnonzero(cand).tolist():
                shared = (keys[i][None, :] == self._bands).any(axis=1)
                js = (self._sigs[shared] == sigs[i]).mean(axis=1)
                if len(js) and js.max() >= self.near_threshold:
                    hits.append((i, "near", self.ids[int(np.flatnonzero(shared)[int(js.argmax())])]))
        if len(self._gram_keys):
            grams = ngrams_many(words)
            flat = np.concatenate(grams) if grams else np.zeros(0, dtype=np.uint64)
            owner = np.repeat(np.arange(len(grams)), [len(g) for g in grams])
            hit = self._gram_keys.contains(flat)
            seen: set[tuple[int, str]] = set()
            for pos, g in zip(owner[hit].tolist(), flat[hit].tolist(), strict=True):
                for eid in self.grams[g]:
                    if (pos, eid) not in seen:
                        seen.add((pos, eid))
                        hits.append((pos, "ngram13", eid))
        return hits


@dataclass
class ContaminationResult:
    items: int
    hits: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # kind -> eval id -> train ids

    def add(self, kind: str, eval_id: str, train_id: str) -> None:
        self.hits.setdefault(kind, {}).setdefault(eval_id, set()).add(train_id)

    def eval_ids(self) -> list[str]:
        return sorted({e for by in self.hits.values() for e in by})

    def train_ids(self) -> set[str]:
        return {t for by in self.hits.values() for ts in by.values() for t in ts}

    def to_json(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "contaminated": len(self.eval_ids()),
            "eval_ids": self.eval_ids(),
            "train_ids": sorted(self.train_ids()),
            "by_kind": {k: len(self.hits.get(k, {})) for k in KINDS},
        }


def find_contamination(
    eval_items: Sequence[tuple[str, str]], train_items: Sequence[tuple[str, str]], *, near_threshold: float = 0.8
) -> ContaminationResult:
    """Items are (id, input text). Returns which eval items leak into training, and through which records."""
    index = EvalIndex(eval_items, near_threshold)
    res = ContaminationResult(items=len(eval_items))
    batch = 512
    for s in range(0, len(train_items), batch):
        chunk = train_items[s : s + batch]
        words = index.hasher.word_hashes_many([t for _, t in chunk])
        sigs = index.hasher.signatures_of(index.hasher.shingles_many(words))
        for pos, kind, eid in index.lookup_many([t for _, t in chunk], sigs, words):
            res.add(kind, eid, chunk[pos][0])
    return res
