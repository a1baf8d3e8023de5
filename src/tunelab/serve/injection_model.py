"""A small local prompt-injection classifier: logistic regression over hashed word 1- and 2-grams.

A text is a sequence of tokens (lowercased words, and each punctuation mark on its own: `<|`, `[`, `#` carry
signal in jailbreaks). Each position contributes the weight of its unigram and of the bigram it ends; a
span's logit is the bias plus the mean of its features' weights (`pool`; "sqrt" divides by the square root of
their number instead), so a span's score does not grow with its length. The text's score is the highest of the whole
text's and of every window of `window` tokens (stride half of it): an instruction pasted into a long
document (an indirect injection) is judged on the window around it instead of drowning in the document.
Scoring is numpy over one array of token hashes: well under a millisecond for a prompt, a few ms for 10,000
characters.

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
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9]")
_BIGRAM_MIX = np.uint64(0x9E3779B97F4A7C15)
SHIPPED = Path(__file__).with_name("injection_model.npz")


def token_hashes(text: str) -> np.ndarray:
    """crc32 of each token of the lowercased text (uint64)."""
    toks = _TOKEN.findall(text.lower())
    return np.fromiter((zlib.crc32(t.encode()) for t in toks), dtype=np.uint64, count=len(toks))


def position_features(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(unigram ids [n], bigram ids [n]; the first position's bigram is the start marker's)."""
    h = token_hashes(text)
    prev = np.concatenate([np.array([0x5EED], dtype=np.uint64), h[:-1]])
    with np.errstate(over="ignore"):
        bi = (prev * _BIGRAM_MIX + h + np.uint64(1)) * _BIGRAM_MIX
    return (h % np.uint64(DIM)).astype(np.int64), ((bi >> np.uint64(29)) % np.uint64(DIM)).astype(np.int64)


def span_norm(length: int | np.ndarray, pool: str) -> float | np.ndarray:
    """What a span's summed contributions are divided by: its number of features (mean) or its square root."""
    n = np.maximum(2 * np.asarray(length, dtype=np.float64), 1.0)
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

    def logit(self, text: str) -> float:
        uni, bi = position_features(text)
        n = len(uni)
        if n == 0:
            return self.bias
        contrib = self.weights[uni] + self.weights[bi]
        csum = np.concatenate([[0.0], np.cumsum(contrib, dtype=np.float64)])
        se = np.array(spans(n, self.window))
        return self.bias + float(np.max((csum[se[:, 1]] - csum[se[:, 0]]) / span_norm(se[:, 1] - se[:, 0], self.pool)))

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
                                           "pool": self.pool, "manifest": self.manifest}).encode(), dtype=np.uint8),
        )  # fmt: skip
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> InjectionModel:
        with np.load(path) as z:
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
        )


@lru_cache(maxsize=4)
def load(path: str | None = None) -> InjectionModel:
    """The shipped classifier (or the one at `path`), loaded once."""
    return InjectionModel.load(Path(path) if path else SHIPPED)
