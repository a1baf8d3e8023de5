"""Near-duplicate detection: MinHash over word 5-grams, banded LSH, candidates verified on signatures.

Vectorised: a batch of texts becomes one array of shingle hashes; the 128 permutations are one
multiply-shift over that array (uint64 arithmetic wraps), and each record's minimum is one
`np.minimum.reduceat`. No Python loop runs per shingle or per permutation.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

# Word splitting, casefolded, with punctuation as a separator. ASCII text (most text) takes a byte path: one
# 256-entry `bytes.translate` turns punctuation and every ASCII whitespace into a space and folds the case.
# Other text is casefolded and split as `str` first. Both give UTF-8 bytes whose only separator is b" ".
_PUNCT = str.maketrans(
    dict.fromkeys(
        string.punctuation.replace("_", "")
        + "\u201c\u201d\u2018\u2019\u2014\u2013\u2026\u00ab\u00bb\u00b7\u2022\u00a1\u00bf",
        " ",
    )
)
_SPACE = string.punctuation.replace("_", "") + "\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"  # all ASCII whitespace
_FOLD = bytes.maketrans(
    (_SPACE + string.ascii_uppercase).encode(), (" " * len(_SPACE) + string.ascii_lowercase).encode()
)


def _fold(text: str) -> bytes:
    if text.isascii():
        return text.encode().translate(_FOLD)
    return " ".join(text.casefold().translate(_PUNCT).split()).encode("utf-8", "surrogatepass").translate(_FOLD)


def split_words(text: str) -> list[str]:
    return [w.decode("utf-8", "surrogatepass") for w in _fold(text).split()]


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


# Word hashes, vectorised over a whole batch of texts: the folded texts are joined into one byte array and a
# word's hash is a polynomial over its bytes, sum(T[byte_j] * P**(j - start)) mod 2**64, where T is a random
# table (T[space] = 0) and P is odd, so P has an inverse mod 2**64. Summing T[byte_j] * P**j over every byte
# from one word start to the next (one `np.add.reduceat`; spaces add 0), then multiplying by P**-start, gives
# each word's hash independently of where it sits. A final 64-bit mixer spreads the bits.
_RNG = np.random.default_rng(0x5EED)
_T = _RNG.integers(1, 2**63, size=256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_T[32] = 0
_P = 0x9E3779B97F4A7C15 | 1
_GROUP_BYTES = 4 << 20  # texts are hashed in groups of about this many bytes (bounded temporaries)


class _Powers:
    """P**j and P**-j mod 2**64 for j < n, grown on demand."""

    def __init__(self) -> None:
        self.pw = np.ones(1, dtype=np.uint64)
        self.ipw = np.ones(1, dtype=np.uint64)

    def upto(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.pw) < n:
            m = max(n, 2 * len(self.pw))
            self.pw = np.full(m, _P, dtype=np.uint64)
            self.pw[0] = 1
            np.multiply.accumulate(self.pw, out=self.pw)
            self.ipw = np.full(m, pow(_P, -1, 2**64), dtype=np.uint64)
            self.ipw[0] = 1
            np.multiply.accumulate(self.ipw, out=self.ipw)
        return self.pw, self.ipw


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


class MinHasher:
    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm, self.ngram = num_perm, ngram
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd
        self._powers = _Powers()

    def word_hashes(self, text: str) -> np.ndarray:
        return self.word_hashes_many([text])[0]

    def word_hashes_many(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, the 64-bit hash of each of its words (`split_words`), in order."""
        parts = [_fold(t) for t in texts]
        out: list[np.ndarray] = []
        i = 0
        while i < len(parts):  # groups of whole texts, about _GROUP_BYTES each
            j, size = i, 0
            while j < len(parts) and (j == i or size + len(parts[j]) < _GROUP_BYTES):
                size += len(parts[j]) + 1
                j += 1
            out += self._hash_group(parts[i:j])
            i = j
        return out

    def _hash_group(self, parts: list[bytes]) -> list[np.ndarray]:
        # a space between texts: no word spans two; `_fold` left spaces as the only separator
        buf = np.frombuffer(b" ".join(parts), dtype=np.uint8)
        n = len(buf)
        word = buf != 32
        starts = np.flatnonzero(word[1:] > word[:-1]) + 1
        if n and word[0]:
            starts = np.concatenate([[0], starts])
        pw, ipw = self._powers.upto(n)
        vals = _T[buf]
        np.multiply(vals, pw[:n], out=vals)
        h = np.add.reduceat(vals, starts) if len(starts) else np.zeros(0, dtype=np.uint64)
        h *= ipw[starts]
        _mix64(h)
        begins = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]])
        bounds = [*np.searchsorted(starts, begins).tolist(), len(starts)]
        return [h[bounds[k] : bounds[k + 1]] for k in range(len(parts))]

    def shingles_many(self, words: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Shingle hashes of many records in one pass (duplicates kept: they do not change a minimum)."""
        return [np.zeros(1, dtype=np.uint64) if len(s) == 0 else s for s in window_hashes(words, self.ngram, _SEED_MIX)]

    def shingles(self, text: str) -> np.ndarray:
        return self.shingles_many([self.word_hashes(text)])[0]

    def signatures(self, texts: Sequence[str], chunk: int = 4096) -> np.ndarray:
        return self.signatures_of(self.shingles_many(self.word_hashes_many(texts)), chunk)

    def signatures_of(self, parts: Sequence[np.ndarray], chunk: int = 8192) -> np.ndarray:
        """[len(parts), num_perm] uint32 signatures from per-record shingle arrays.

        Permutation k hashes a shingle x to the high 32 bits of a_k * x mod 2**64 (multiply-shift; the shingle
        hashes are already mixed, and an added constant measured no better). Shingles are hashed in chunks of
        about `chunk` (whole records only) into one reused buffer laid out permutation-major; the high words
        are read in place (a strided view, no shift pass) and each record's minimum is one `reduceat`.
        """
        out = np.empty((len(parts), self.num_perm), dtype=np.uint32)
        width = max(chunk, max((len(p) for p in parts), default=1))
        buf = np.empty((self.num_perm, width), dtype=np.uint64)
        a = self.a[:, None]
        high = 1 if np.little_endian else 0
        i = 0
        while i < len(parts):
            j, cols = i, 0
            while j < len(parts) and (cols == 0 or cols + len(parts[j]) <= chunk):
                cols += len(parts[j])
                j += 1
            h = buf[:, :cols]
            np.multiply(a, np.concatenate(parts[i:j])[None, :], out=h)
            offsets = np.cumsum([0] + [len(p) for p in parts[i : j - 1]])
            out[i:j] = np.minimum.reduceat(h.view(np.uint32)[:, high::2], offsets, axis=1).T
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
