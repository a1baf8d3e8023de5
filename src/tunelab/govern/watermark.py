"""A keyed green-list watermark for generated text (Kirchenbauer et al., "A Watermark for Large Language
Models", 2023: KGW), and its detector.

At each step the vocabulary is split by a keyed pseudo-random permutation seeded from the previous token: the
first `gamma` of it is "green". The sampler adds `delta` to the green tokens' logits before it samples (or takes
the argmax), so a marked text holds more green tokens than chance. The detector needs only the key and the
tokenizer: over the scored tokens (each (previous, token) pair once, so repeated phrases do not inflate it),
z = (green - gamma T) / sqrt(T gamma (1 - gamma)), and the one-sided p-value of z under the null (unmarked
text: each token green with probability gamma).

The key stays on the server (`watermark.key_file`, made on first use, mode 0600). The green list depends on the
key, the previous token and the vocabulary size only, so it works the same in the lean decoder, the
transformers runner and any batch composition (the bias is added per row when a token is sampled).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEME = "kgw-v1"


@dataclass
class Watermark:
    key: bytes
    gamma: float = 0.25
    delta: float = 2.0
    cache_size: int = 1024
    _cache: OrderedDict[tuple[int, int], Any] = field(default_factory=OrderedDict, repr=False)

    def fingerprint(self) -> str:
        """Names the key without revealing it (the first 12 hex digits of sha256 of sha256(key))."""
        return hashlib.sha256(hashlib.sha256(self.key).digest()).hexdigest()[:12]

    def _seed(self, prev: int) -> int:
        h = hashlib.blake2b(prev.to_bytes(8, "little", signed=True), key=self.key[:64], digest_size=8)
        return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)

    def green(self, prev: int, vocab: int) -> Any:
        """Which tokens are green after `prev`: a bool tensor over the vocabulary, from a keyed permutation."""
        import torch

        k = (prev, vocab)
        hit = self._cache.get(k)
        if hit is not None:
            self._cache.move_to_end(k)
            return hit
        g = torch.Generator().manual_seed(self._seed(prev))
        mask = torch.zeros(vocab, dtype=torch.bool)
        mask[torch.randperm(vocab, generator=g)[: max(1, int(self.gamma * vocab))]] = True
        self._cache[k] = mask
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return mask

    def bias(self, logits: Any, prev: int) -> Any:
        """`logits` (one row, over the vocabulary) with `delta` added to the green tokens after `prev`."""
        return logits + self.delta * self.green(prev, logits.shape[-1]).to(logits.dtype)

    def is_green(self, prev: int, token: int, vocab: int) -> bool:
        return 0 <= token < vocab and bool(self.green(prev, vocab)[token])

    def score(self, ids: list[int], vocab: int, *, ignore_repeated: bool = True) -> dict[str, Any]:
        """The detector on one token sequence: scored tokens, green count, z-score and p-value."""
        seen: set[tuple[int, int]] = set()
        green = scored = 0
        for prev, tok in itertools.pairwise(ids):
            if ignore_repeated:
                if (prev, tok) in seen:
                    continue
                seen.add((prev, tok))
            scored += 1
            green += self.is_green(prev, tok, vocab)
        if scored == 0:
            return {"tokens": 0, "green": 0, "green_fraction": None, "z": None, "p_value": None}
        g = self.gamma
        z = (green - g * scored) / math.sqrt(scored * g * (1 - g))
        return {"tokens": scored, "green": green, "green_fraction": green / scored, "z": z,
                "p_value": 0.5 * math.erfc(z / math.sqrt(2))}  # fmt: skip


def load_key(path: Path, create: bool = True) -> bytes:
    """The server's watermark key: 32 random bytes in `path` (hex), made on first use with mode 0600."""
    from tunelab.errors import ConfigError

    if path.is_file():
        try:
            key = bytes.fromhex(path.read_text().strip())
        except ValueError:
            raise ConfigError("the watermark key file must hold hex digits", file=path,
                              field="watermark.key_file") from None  # fmt: skip
        if len(key) < 16:
            raise ConfigError("the watermark key is shorter than 16 bytes", file=path, field="watermark.key_file")
        return key
    if not create:
        raise ConfigError("no watermark key at this path", file=path, field="--key-file")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def default_key_file() -> Path:
    from tunelab.paths import tunelab_home

    return tunelab_home() / "watermark.key"
