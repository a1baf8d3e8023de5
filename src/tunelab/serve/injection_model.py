"""A small local prompt-injection classifier: logistic regression over hashed word 1- and 2-grams.

A text is a sequence of tokens (lowercased words, and punctuation marks on their own, a run of the same mark
as one token written at most three long: `<|`, `[`, `#` carry signal in jailbreaks, and "!!!!!!!!" is then
one token "!!!", not eight). Each position contributes the weight of its unigram and of the bigram it ends, the
k-th occurrence of either in the text with 1/k of its weight; a span's logit is the bias plus the mean of its
features' contributions, with `prior` zero-weight features added (`pool`; "sqrt" divides by the square root of
their number instead), so a span's score does not grow with its length, one word repeated cannot carry a text,
and a text of two or three words needs more than one loaded word to count as an attack. The text's score is
the highest of the whole text's and of every window of `window` tokens (stride half of it): an instruction
pasted into a long document (an indirect injection) is judged on the window around it instead of drowning in
the document. Scoring is numpy over one array of token hashes: 0.2 ms a request on average, about 1 ms at p99
(`tunelab bench guard`).

The shipped weights (`injection_model.npz` beside this file) are what `tunelab guard train` writes from the
corpus in `injection_corpus` (`injection_train.train()`); its manifest records the sources, their
licences and counts, the training settings and the held-out figures.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

DIM = 1 << 18
WINDOW = 48
POOL = "mean"
PRIOR = 8.0  # features of weight zero added to every span (see span_norm)
_TOKEN = re.compile(r"[a-z0-9']+|([^\sa-z0-9])\1*")
_BIGRAM_MIX = np.uint64(0x9E3779B97F4A7C15)
SHIPPED = Path(__file__).with_name("injection_model.npz")


def token_hashes(text: str) -> np.ndarray:
    """crc32 of each token of the lowercased text (uint64)."""
    toks = [m[0][:3] if m[1] else m[0] for m in _TOKEN.finditer(text.lower())]  # a run of one mark: 3 at most
    return np.fromiter((zlib.crc32(t.encode()) for t in toks), dtype=np.uint64, count=len(toks))


def position_features(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(unigram ids [n], bigram ids [n]; the first position's bigram is the start marker's)."""
    h = token_hashes(text)
    prev = np.concatenate([np.array([0x5EED], dtype=np.uint64), h[:-1]])
    with np.errstate(over="ignore"):
        bi = (prev * _BIGRAM_MIX + h + np.uint64(1)) * _BIGRAM_MIX
    return (h % np.uint64(DIM)).astype(np.int64), ((bi >> np.uint64(29)) % np.uint64(DIM)).astype(np.int64)


def repeat_damping(ids: np.ndarray) -> np.ndarray:
    """1 / k for the k-th occurrence of each id in the text: a word said again adds less each time (its total
    grows as log k), so "word word word ..." or a list of one identifier cannot outweigh a text's other words."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.float32)
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    first = np.concatenate([[True], s[1:] != s[:-1]])
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(s)), 0))
    k = np.empty(len(ids), dtype=np.float32)
    k[order] = np.arange(len(s)) - group_start + 1
    return 1.0 / k


def contributions(weights: np.ndarray, uni: np.ndarray, bi: np.ndarray) -> np.ndarray:
    """Each position's contribution: its unigram's and its bigram's weights, each damped by its repeats."""
    return weights[uni] * repeat_damping(uni) + weights[bi] * repeat_damping(bi)


def span_norm(length: int | np.ndarray, pool: str, prior: float = 0.0) -> float | np.ndarray:
    """What a span's summed contributions are divided by: its number of features plus `prior` (mean), or the
    square root of that. The prior counts as features of weight zero: a span of a few tokens is pulled towards
    the bias, so that one strongly weighted word ("word", "!") cannot make a short text an attack."""
    n = np.maximum(2 * np.asarray(length, dtype=np.float64) + prior, 1.0)
    return n if pool == "mean" else np.sqrt(n)


def spans(n: int, window: int = WINDOW) -> list[tuple[int, int]]:
    """The whole text and, for a text longer than `window` tokens, every window (stride window // 2)."""
    out = [(0, n)]
    if n > window:
        step = window // 2
        out += [(s, min(s + window, n)) for s in range(0, n - step, step)]
    return out


@dataclass
class InjectionModel:
    weights: np.ndarray  # [DIM] float32
    bias: float
    threshold: float  # the score at which the serving guard flags (chosen on training data)
    window: int
    manifest: dict[str, Any]
    pool: str = POOL
    prior: float = PRIOR

    def logit(self, text: str) -> float:
        uni, bi = position_features(text)
        n = len(uni)
        if n == 0:
            return self.bias
        contrib = contributions(self.weights, uni, bi)
        csum = np.concatenate([[0.0], np.cumsum(contrib, dtype=np.float64)])
        se = np.array(spans(n, self.window))
        return self.bias + float(
            np.max((csum[se[:, 1]] - csum[se[:, 0]]) / span_norm(se[:, 1] - se[:, 0], self.pool, self.prior))
        )

    def score(self, text: str) -> float:
        """P(injection), the highest over the text and its windows."""
        z = self.logit(text)
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def save(self, path: Path) -> None:
        import io

        from tunelab.fsutil import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            weights=self.weights.astype(np.float16),
            meta=np.frombuffer(json.dumps({"bias": self.bias, "threshold": self.threshold, "window": self.window,
                                           "pool": self.pool, "prior": self.prior, "manifest": self.manifest}).encode(),
                               dtype=np.uint8),
        )  # fmt: skip
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> InjectionModel:
        with open(path, "rb") as f, np.load(f) as z:  # our handle: numpy leaks its own on a bad zip
            meta = json.loads(bytes(z["meta"]).decode())
            w = z["weights"].astype(np.float32)
        if w.shape != (DIM,):
            raise ValueError(f"{path}: weights of shape {w.shape}, expected ({DIM},)")
        return cls(
            w,
            float(meta["bias"]),
            float(meta["threshold"]),
            int(meta["window"]),
            meta["manifest"],
            meta["pool"],
            float(meta["prior"]),
        )


@lru_cache(maxsize=4)
def load(path: str | None = None) -> InjectionModel:
    """The shipped classifier (or the one at `path`), loaded once."""
    return InjectionModel.load(Path(path) if path else SHIPPED)
