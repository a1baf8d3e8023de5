from __future__ import annotations

import random

import numpy as np

from tunelab.data.minhash import MinHasher, near_duplicate_clusters

WORDS = [f"w{i}" for i in range(5000)]


def _doc(rng: random.Random, n: int = 100) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _edit(rng: random.Random, text: str, k: int) -> str:
    words = text.split()
    for _ in range(k):
        words[rng.randrange(len(words))] = rng.choice(WORDS)
    return " ".join(words)


def test_signature_agreement_tracks_true_jaccard() -> None:
    h = MinHasher(num_perm=256)
    rng = random.Random(0)
    a = _doc(rng)
    b = _edit(rng, a, 3)
    sa, sb = h.signatures([a, b])
    ga, gb = set(h.shingles(a).tolist()), set(h.shingles(b).tolist())
    true = len(ga & gb) / len(ga | gb)
    assert abs(float(np.mean(sa == sb)) - true) < 0.1


def test_signatures_are_deterministic_and_case_insensitive() -> None:
    s1 = MinHasher().signatures(["The Quick brown fox jumps over the lazy dog"])
    s2 = MinHasher().signatures(["the quick BROWN fox jumps over the lazy dog!"])
    assert np.array_equal(s1, s2)


def test_planted_near_duplicates_are_found_and_unrelated_texts_are_not() -> None:
    rng = random.Random(1)
    base = [_doc(rng, 200) for _ in range(300)]
    planted = {}
    texts = list(base)
    for i in range(0, 300, 10):  # 30 near copies, 2 word edits in 200 (Jaccard about 0.9)
        planted[len(texts)] = i
        texts.append(_edit(rng, base[i], 2))
    found = {idx: kept for idx, kept, _ in near_duplicate_clusters(texts, threshold=0.8)}
    assert found == planted


def test_short_texts_and_empty_text() -> None:
    out = near_duplicate_clusters(["a b", "a b", "", "c d e"], threshold=0.8)
    assert (1, 0) in {(i, k) for i, k, _ in out}


def test_word_hashes_do_not_depend_on_position_batch_or_grouping(monkeypatch) -> None:
    import tunelab.data.minhash as mh

    rng = random.Random(2)
    texts = [_doc(rng, rng.randrange(0, 40)) for _ in range(200)]
    texts += ["", "  \t ", "Hello, World!", "Straße\u00a0NAÏVE\u2003café — “quoted”", "a\x00b c", "\x1cfoo\x1fbar"]
    h = MinHasher()
    batch = h.word_hashes_many(texts)
    seen: dict[str, int] = {}
    for text, hashes in zip(texts, batch, strict=True):
        words = mh.split_words(text)
        assert len(words) == len(hashes)
        assert np.array_equal(h.word_hashes(text), hashes)  # alone == in a batch
        for w, x in zip(words, hashes.tolist(), strict=True):
            assert seen.setdefault(w, x) == x  # a word hashes the same wherever it is
    assert len(set(seen.values())) == len(seen)  # and distinct words differently
    assert mh.split_words("Straße\u00a0NAÏVE\u2003café — “quoted”") == ["strasse", "naïve", "café", "quoted"]
    monkeypatch.setattr(mh, "_GROUP_BYTES", 64)  # many small groups give the same hashes
    assert all(np.array_equal(a, b) for a, b in zip(batch, MinHasher().word_hashes_many(texts), strict=True))
