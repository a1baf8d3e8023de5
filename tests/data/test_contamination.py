from __future__ import annotations

import random

from tunelab.data.contamination import find_contamination

W = [f"w{i}" for i in range(3000)]
TEMPLATE = "Which topic is this article: business, entertainment, politics, sport or tech? Answer with one word."


def _doc(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(W) for _ in range(n))


def test_three_kinds_of_leak_are_found_and_attributed() -> None:
    rng = random.Random(0)
    ev = [(f"e{i}", _doc(rng)) for i in range(40)]
    train = [(f"t{i}", _doc(rng)) for i in range(200)]
    train.append(("exact", ev[0][1]))
    words = ev[1][1].split()
    words[30] = "changed"
    train.append(("near", " ".join(words)))
    train.append(("gram", _doc(rng, 20) + " " + " ".join(ev[2][1].split()[10:24]) + " " + _doc(rng, 20)))
    res = find_contamination(ev, train)
    j = res.to_json()
    assert j["eval_ids"] == ["e0", "e1", "e2"]
    assert j["train_ids"] == ["exact", "gram", "near"]
    assert res.hits["exact"] == {"e0": {"exact"}}
    assert res.hits["near"] == {"e0": {"exact"}, "e1": {"near"}}
    assert set(res.hits["ngram13"]) == {"e0", "e1", "e2"}


def test_a_shared_instruction_template_is_not_contamination() -> None:
    rng = random.Random(1)
    ev = [(f"e{i}", f"{_doc(rng)}\n\n{TEMPLATE}") for i in range(50)]
    train = [(f"t{i}", f"{_doc(rng)}\n\n{TEMPLATE}") for i in range(100)]
    assert find_contamination(ev, train).to_json()["contaminated"] == 0


def test_keyset_membership_equals_isin() -> None:
    import numpy as np

    from tunelab.data.contamination import KeySet

    rng = np.random.default_rng(0)
    for n in (0, 1, 50, 5000):
        keys = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2)
        probe = np.concatenate([keys[: n // 2], rng.integers(0, 2**63, size=3000, dtype=np.uint64)])
        probe = np.concatenate([probe, probe ^ np.uint64(1 << 40)])  # same low bits, different key
        ks = KeySet(keys)
        assert len(ks) == len(np.unique(keys))
        assert np.array_equal(ks.contains(probe), np.isin(probe, keys))
