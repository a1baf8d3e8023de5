"""Diversity and balance: low diversity and heavy label imbalance cause regressions after fine-tuning."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

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


def diversity_report(
    inputs_sample: list[str], words: list[int], labels: Counter[str], near_duplicates: int, n_records: int
) -> dict[str, Any]:
    """Stats over all records (lengths, labels) and over a sample of inputs (distinct-n, scripts)."""
    w = sorted(words) or [0]
    out: dict[str, Any] = {
        "input_words": {"min": w[0], "p50": w[len(w) // 2], "max": w[-1]},
        "distinct_1": distinct_n(inputs_sample, 1),
        "distinct_2": distinct_n(inputs_sample, 2),
        "distinct_sample": len(inputs_sample),
        "near_duplicate_ratio": near_duplicates / n_records if n_records else 0.0,
        "scripts": dict(Counter(_script(t) for t in inputs_sample)),
        "warnings": [],
    }
    n_answers = sum(labels.values())
    if labels and len(labels) <= max(2, n_answers // 10):  # few distinct answers: a label set
        ratio = max(labels.values()) / min(labels.values())
        out["label_imbalance"] = ratio
        if ratio > IMBALANCE_WARN:
            out["warnings"].append(f"heavy label imbalance: most/least frequent label = {ratio:.1f}")
    if inputs_sample and out["distinct_2"] < DISTINCT2_WARN:
        out["warnings"].append(f"low diversity: distinct-2 of inputs is {out['distinct_2']:.2f}")
    if out["near_duplicate_ratio"] > NEAR_RATIO_WARN:
        out["warnings"].append(f"{out['near_duplicate_ratio']:.0%} of training records are near duplicates")
    return out
