"""Near-duplicate detection: MinHash over word 5-grams, banded LSH, candidates verified on signatures.

Vectorised: a batch of texts becomes one array of shingle hashes; the 128 permutations are one
multiply-shift over that array (uint64 arithmetic wraps), and each record's minimum is one
`np.minimum.reduceat`. No Python loop runs per shingle or per permutation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

_WORD = re.compile(r"\w+")
_SEED_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self._words: dict[str, int] = {}

    def _word(self, w: str) -> int:
        h = self._words.get(w)
        if h is None:
            h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
            if len(self._words) < 2_000_000:  # bounded cache
                self._words[w] = h
        return h

    def shingles(self, text: str) -> np.ndarray:
        words = np.fromiter((self._word(w) for w in _WORD.findall(text.casefold())), dtype=np.uint64)
        n = self.ngram
        if len(words) == 0:
            return np.zeros(1, dtype=np.uint64)
        if len(words) < n:
            return np.bitwise_xor.reduce(words * _SEED_MIX[: len(words)], keepdims=True)
        out = words[: len(words) - n + 1] * _SEED_MIX[0]
        for k in range(1, n):
            out = out ^ (words[k : len(words) - n + 1 + k] * _SEED_MIX[k])
        return np.unique(out)

    def signatures(self, texts: Sequence[str], chunk: int = 4096) -> np.ndarray:
        """[len(texts), num_perm] uint32 signatures.

        Shingles are hashed in chunks of about `chunk` rows (whole records only) into one reused buffer,
        so the working set stays in cache instead of allocating [all shingles x num_perm] temporaries.
        """
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        parts = [self.shingles(t) for t in texts]
        buf = np.empty((max(chunk, max((len(p) for p in parts), default=1)), self.num_perm), dtype=np.uint64)
        i = 0
        while i < len(parts):
            j, rows = i, 0
            while j < len(parts) and (rows == 0 or rows + len(parts[j]) <= chunk):
                rows += len(parts[j])
                j += 1
            sh = np.concatenate(parts[i:j])
            h = buf[:rows]
            np.multiply(sh[:, None], self.a[None, :], out=h)
            np.add(h, self.b[None, :], out=h)
            np.right_shift(h, np.uint64(32), out=h)
            offsets = np.cumsum([0] + [len(p) for p in parts[i : j - 1]])
            out[i:j] = np.minimum.reduceat(h, offsets, axis=0)
            i = j
        return out


def jaccard_estimate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


@dataclass
class NearDupIndex:
    """Banded LSH over signatures. `add` returns the id of an earlier near-duplicate, or None."""

    num_perm: int = 128
    bands: int = 32
    threshold: float = 0.8
    _tables: list[dict[bytes, list[int]]] = field(default_factory=list)
    _sigs: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ValueError("num_perm must be a multiple of bands")
        self._rows = self.num_perm // self.bands
        self._tables = [{} for _ in range(self.bands)]

    def _keys(self, sig: np.ndarray) -> list[bytes]:
        r = self._rows
        return [sig[i * r : (i + 1) * r].tobytes() for i in range(self.bands)]

    def query(self, sig: np.ndarray) -> tuple[int, float] | None:
        """The best earlier match at or above the threshold (id, estimated Jaccard)."""
        seen: set[int] = set()
        best: tuple[int, float] | None = None
        for table, key in zip(self._tables, self._keys(sig), strict=True):
            for cand in table.get(key, ()):
                if cand in seen:
                    continue
                seen.add(cand)
                j = jaccard_estimate(sig, self._sigs[cand])
                if j >= self.threshold and (best is None or j > best[1]):
                    best = (cand, j)
        return best

    def insert(self, sig: np.ndarray) -> int:
        idx = len(self._sigs)
        self._sigs.append(sig)
        for table, key in zip(self._tables, self._keys(sig), strict=True):
            table.setdefault(key, []).append(idx)
        return idx

    def __len__(self) -> int:
        return len(self._sigs)


def near_duplicate_clusters(
    texts: Iterable[str], *, threshold: float = 0.8, num_perm: int = 128, bands: int = 32, batch: int = 512
) -> list[tuple[int, int, float]]:
    """(index, kept_index, estimated Jaccard) for every text that near-duplicates an earlier kept one.

    Greedy in input order: the first of a cluster is kept, later members point at it.
    """
    hasher = MinHasher(num_perm)
    index = NearDupIndex(num_perm, bands, threshold)
    kept: list[int] = []  # index position -> original text index
    out: list[tuple[int, int, float]] = []
    buf: list[str] = []
    pos = 0

    def flush() -> None:
        nonlocal pos
        for sig in hasher.signatures(buf):
            hit = index.query(sig)
            if hit is None:
                index.insert(sig)
                kept.append(pos)
            else:
                out.append((pos, kept[hit[0]], hit[1]))
            pos += 1
        buf.clear()

    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            flush()
    flush()
    return out
