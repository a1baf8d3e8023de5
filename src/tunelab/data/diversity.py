"""Diversity and balance: low diversity and heavy label imbalance cause regressions after fine-tuning."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tunelab.data.formats import Record

_WORD = re.compile(r"\w+")
IMBALANCE_WARN = 10.0  # most / least frequent label
DISTINCT2_WARN = 0.2
NEAR_RATIO_WARN = 0.1


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts (1.0: no n-gram repeats)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for t in texts:
        w = _WORD.findall(t.casefold())
        grams.update(tuple(w[i : i + n]) for i in range(len(w) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def _script(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "none"
    latin = sum(c.isascii() or "\u00c0" <= c <= "\u024f" for c in letters) / len(letters)
    return "latin" if latin > 0.8 else "other"


def diversity_report(train: list[Record], near_duplicates: int) -> dict[str, Any]:
    inputs = [r.input for r in train]
    answers = [r.answer.strip() for r in train]
    words = sorted(len(_WORD.findall(t)) for t in inputs) or [0]
    labels = Counter(answers)
    classification = len(labels) <= max(2, len(answers) // 10)  # few distinct answers: a label set
    out: dict[str, Any] = {
        "input_words": {"min": words[0], "p50": words[len(words) // 2], "max": words[-1]},
        "distinct_1": distinct_n(inputs, 1),
        "distinct_2": distinct_n(inputs, 2),
        "near_duplicate_ratio": near_duplicates / len(train) if train else 0.0,
        "scripts": dict(Counter(_script(t) for t in inputs)),
        "warnings": [],
    }
    if classification and labels:
        ratio = max(labels.values()) / min(labels.values())
        out["label_imbalance"] = ratio
        if ratio > IMBALANCE_WARN:
            out["warnings"].append(f"heavy label imbalance: most/least frequent label = {ratio:.1f}")
    if train and out["distinct_2"] < DISTINCT2_WARN:
        out["warnings"].append(f"low diversity: distinct-2 of inputs is {out['distinct_2']:.2f}")
    if out["near_duplicate_ratio"] > NEAR_RATIO_WARN:
        out["warnings"].append(f"{out['near_duplicate_ratio']:.0%} of training records are near duplicates")
    return out
