"""Train/eval contamination of three kinds: the same input (exact), a near-duplicate input (MinHash),
and a shared word 13-gram (the test GPT-3 and later reports used). The eval side is indexed (it is the
small one) and the training records stream past it.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from tunelab.data.minhash import MinHasher, NearDupIndex
from tunelab.data.text import text_hash

_WORD = re.compile(r"\w+")
KINDS = ("exact", "near", "ngram13")
BOILERPLATE_SHARE = 0.05


def _gram_list(text: str, n: int = 13) -> list[int]:
    words = _WORD.findall(text.casefold())
    return [
        int.from_bytes(hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).digest(), "little")
        for i in range(len(words) - n + 1)
    ]


def ngram_hashes(text: str, n: int = 13) -> set[int]:
    return set(_gram_list(text, n))


@dataclass
class ContaminationResult:
    items: int
    hits: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # kind -> eval id -> train ids

    def eval_ids(self) -> list[str]:
        return sorted({e for by in self.hits.values() for e in by})

    def train_ids(self) -> set[str]:
        return {t for by in self.hits.values() for ts in by.values() for t in ts}

    def to_json(self) -> dict[str, object]:
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
    res = ContaminationResult(items=len(eval_items), hits={k: defaultdict(set) for k in KINDS})
    exact: dict[str, list[str]] = defaultdict(list)
    grams: dict[int, list[str]] = defaultdict(list)
    hasher = MinHasher()
    index = NearDupIndex(threshold=near_threshold)
    eval_ids = [eid for eid, _ in eval_items]
    eval_grams = [_gram_list(text) for _, text in eval_items]
    share: dict[int, int] = defaultdict(int)
    for gl in eval_grams:
        for g in set(gl):
            share[g] += 1
    # An n-gram shared by many eval items is template (an instruction, a header), not leaked content; so is
    # every n-gram that touches a word of it ("... said. Which topic is this article: ...").
    limit = max(2, int(BOILERPLATE_SHARE * len(eval_items)))
    n = 13
    for (eid, text), gl in zip(eval_items, eval_grams, strict=True):
        exact[text_hash(text)].append(eid)
        masked = [False] * (len(gl) + n)
        for i, g in enumerate(gl):
            if share[g] >= limit:
                masked[i : i + n] = [True] * n
        for i, g in enumerate(gl):
            if not any(masked[i : i + n]):
                grams[g].append(eid)
    for sig in hasher.signatures([t for _, t in eval_items]):
        index.insert(sig)
    batch = 512
    for s in range(0, len(train_items), batch):
        chunk = train_items[s : s + batch]
        for (tid, text), sig in zip(chunk, hasher.signatures([t for _, t in chunk]), strict=True):
            for eid in exact.get(text_hash(text), ()):
                res.hits["exact"][eid].add(tid)
            hit = index.query(sig)
            if hit is not None:
                res.hits["near"][eval_ids[hit[0]]].add(tid)
            for g in ngram_hashes(text):
                for eid in grams.get(g, ()):
                    res.hits["ngram13"][eid].add(tid)
    res.hits = {k: dict(v) for k, v in res.hits.items()}
    return res
