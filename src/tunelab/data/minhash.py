"""Near-duplicate detection: MinHash over word 5-grams, banded LSH, candidates verified on signatures.

Vectorised: a batch of texts becomes one array of shingle hashes; the 128 permutations are one
multiply-shift over that array (uint64 arithmetic wraps), and each record's minimum is one
`np.minimum.reduceat`. No Python loop runs per shingle or per permutation.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence

import numpy as np

# Word splitting by one C-level translate + split (several times faster than a regex): punctuation becomes space.
_PUNCT = str.maketrans(
    dict.fromkeys(
        string.punctuation.replace("_", "")
        + "\u201c\u201d\u2018\u2019\u2014\u2013\u2026\u00ab\u00bb\u00b7\u2022\u00a1\u00bf",
        " ",
    )
)


def split_words(text: str) -> list[str]:
    return text.casefold().translate(_PUNCT).split()


def window_hashes(words: Sequence[np.ndarray], n: int, mix: np.ndarray) -> list[np.ndarray]:
    """Per record, the hash of every run of `n` consecutive words, computed in one pass over all records.

    A record shorter than `n` words gets one hash of all its words (none if it has no words).
    """
    lens = np.array([len(w) for w in words], dtype=np.int64)
    flat = np.concatenate(words) if len(words) else np.zeros(0, dtype=np.uint64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) if len(words) else lens
    span = max(0, len(flat) - n + 1)
    g = flat[:span] * mix[0]
    for k in range(1, n):
        g ^= flat[k : k + span] * mix[k]
    out = []
    for w, s, ln in zip(words, starts.tolist(), lens.tolist(), strict=True):
        if ln >= n:
            out.append(g[s : s + ln - n + 1])
        elif ln:
            out.append(np.bitwise_xor.reduce(w * mix[:ln], keepdims=True))
        else:
            out.append(np.zeros(0, dtype=np.uint64))
    return out


_SEED_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93, 0xFF51AFD7ED558CCD],
    dtype=np.uint64,
)


class _WordCache(dict[str, int]):
    """word -> stable 64-bit hash; `map(cache.__getitem__, words)` runs the lookups in C."""

    def __missing__(self, w: str) -> int:
        h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        if len(self) < 2_000_000:  # bounded
            self[w] = h
        return h


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self._cache = _WordCache()

    def word_hashes(self, text: str) -> np.ndarray:
        return np.array(list(map(self._cache.__getitem__, split_words(text))), dtype=np.uint64)

    def word_hashes_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`word_hashes` of each text, with one array conversion for the whole batch."""
        words = [split_words(t) for t in texts]
        flat = np.array(list(map(self._cache.__getitem__, (w for ws in words for w in ws))), dtype=np.uint64)
        ends = np.cumsum([len(ws) for ws in words])
        return np.split(flat, ends[:-1]) if len(texts) else []

    def shingles_many(self, words: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Shingle hashes of many records in one pass (duplicates kept: they do not change a minimum)."""
        return [np.zeros(1, dtype=np.uint64) if len(s) == 0 else s for s in window_hashes(words, self.ngram, _SEED_MIX)]

    def shingles(self, text: str) -> np.ndarray:
        return self.shingles_many([self.word_hashes(text)])[0]

    def signatures(self, texts: Sequence[str], chunk: int = 4096) -> np.ndarray:
        return self.signatures_of(self.shingles_many(self.word_hashes_many(texts)), chunk)

    def signatures_of(self, parts: Sequence[np.ndarray], chunk: int = 4096) -> np.ndarray:
        """[len(parts), num_perm] uint32 signatures from per-record shingle arrays.

        Shingles are hashed in chunks of about `chunk` (whole records only) into one reused buffer laid out
        permutation-major, so each per-record minimum is a reduction over contiguous memory.
        """
        out = np.empty((len(parts), self.num_perm), dtype=np.uint32)
        width = max(chunk, max((len(p) for p in parts), default=1))
        buf = np.empty((self.num_perm, width), dtype=np.uint64)
        a, b = self.a[:, None], self.b[:, None]
        i = 0
        while i < len(parts):
            j, cols = i, 0
            while j < len(parts) and (cols == 0 or cols + len(parts[j]) <= chunk):
                cols += len(parts[j])
                j += 1
            h = buf[:, :cols]
            np.multiply(a, np.concatenate(parts[i:j])[None, :], out=h)
            np.add(h, b, out=h)
            np.right_shift(h, np.uint64(32), out=h)
            offsets = np.cumsum([0] + [len(p) for p in parts[i : j - 1]])
            out[i:j] = np.minimum.reduceat(h, offsets, axis=1).T
            i = j
        return out


def band_keys(sigs: np.ndarray, bands: int = 32) -> np.ndarray:
    """[n, bands] uint64: one hash per band of each signature (equal keys = same LSH bucket)."""
    n = len(sigs)
    rows = sigs.shape[1] // bands
    keys = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):  # one band at a time: no [n, num_perm] uint64 temporary
            col = np.zeros(n, dtype=np.uint64)
            for k in range(rows):
                col = col * np.uint64(0x100000001B3) + sigs[:, b * rows + k].astype(np.uint64) + np.uint64(k + 1)
            keys[:, b] = col
    return keys


def lsh_pairs(sigs: np.ndarray, *, bands: int = 32, threshold: float = 0.8) -> list[tuple[int, int, float]]:
    """(member, kept, estimated Jaccard) for every row that near-duplicates an earlier row.

    Batch LSH: per band, rows are sorted by the band's hash; rows sharing a bucket are paired with the
    bucket's first row; candidates are verified on the full signatures (vectorised); clusters are joined
    with union-find and each keeps its first row (input order).
    """
    n = len(sigs)
    if n < 2:
        return []
    keys = band_keys(sigs, bands)
    idx = np.arange(n)
    heads_all, others_all = [], []
    for b in range(bands):
        order = np.argsort(keys[:, b], kind="stable")
        col = keys[order, b]
        new = np.empty(n, dtype=bool)
        new[0] = True
        new[1:] = col[1:] != col[:-1]
        start = np.maximum.accumulate(np.where(new, idx, 0))
        heads_all.append(order[start[~new]])
        others_all.append(order[~new])
    heads, others = np.concatenate(heads_all), np.concatenate(others_all)
    if len(heads) == 0:
        return []
    pair = np.unique(np.minimum(heads, others).astype(np.int64) * n + np.maximum(heads, others))
    a, b_ = pair // n, pair % n
    j = np.empty(len(a))
    for s in range(0, len(a), 65536):
        j[s : s + 65536] = (sigs[a[s : s + 65536]] == sigs[b_[s : s + 65536]]).mean(axis=1)
    ok = j >= threshold
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a[ok].tolist(), b_[ok].tolist(), strict=True):
        rx, ry = find(x), find(y)
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)  # the root is the earliest row
    members = sorted({int(m) for m in np.concatenate([a[ok], b_[ok]])})
    out = []
    for m in members:
        root = find(m)
        if root != m:
            out.append((m, root, float((sigs[m] == sigs[root]).mean())))
    return out


def near_duplicate_clusters(
    texts: Sequence[str], *, threshold: float = 0.8, num_perm: int = 128, bands: int = 32
) -> list[tuple[int, int, float]]:
    """(index, kept_index, estimated Jaccard) for every text that near-duplicates an earlier one."""
    sigs = MinHasher(num_perm).signatures(list(texts))
    return lsh_pairs(sigs, bands=bands, threshold=threshold)
