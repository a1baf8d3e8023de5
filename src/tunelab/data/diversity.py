"""Diversity and balance: low diversity and heavy label imbalance cause regressions after fine-tuning."""

from __future__ import annotations

import re
import threading
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


LANG_SAMPLE = 1000  # texts identified per audit (~0.1 ms each)
LANG_MIN_PROB = 0.5  # below: "unknown" (too short, code, or no language the model knows)
MIXED_WARN = 0.1  # share of identified texts not in the main language

_LOCK = threading.Lock()
_IDENTIFIER: Any = None


def language_identifier() -> Any:
    """py3langid's model (97 languages, naive Bayes over byte n-grams; ~0.7 s to load), loaded once."""
    global _IDENTIFIER
    with _LOCK:
        if _IDENTIFIER is None:
            from py3langid.langid import _load_identifier

            _IDENTIFIER = _load_identifier(norm_probs=True)
        return _IDENTIFIER


def warm_language_identifier() -> threading.Thread:
    """Load the model on a thread (the audit's parent mostly waits on its workers meanwhile)."""
    t = threading.Thread(target=language_identifier, name="tunelab-langid", daemon=True)
    t.start()
    return t


def languages(texts: list[str]) -> dict[str, int]:
    """ISO 639-1 code -> count over up to LANG_SAMPLE texts spread over `texts`; "unknown" when unsure."""
    if not texts:
        return {}
    step = max(1, len(texts) // LANG_SAMPLE)
    ident = language_identifier()
    out: Counter[str] = Counter()
    for t in texts[::step][:LANG_SAMPLE]:
        lang, prob = ident.classify(t[:2000])
        out[lang if prob >= LANG_MIN_PROB and lang != "zxx" else "unknown"] += 1
    return dict(out.most_common())


def diversity_report(
    inputs_sample: list[str], words: list[int], labels: Counter[str], near_duplicates: int, n_records: int
) -> dict[str, Any]:
    """Stats over all records (lengths, labels) and over a sample of inputs (distinct-n, languages)."""
    w = sorted(words) or [0]
    out: dict[str, Any] = {
        "input_words": {"min": w[0], "p50": w[len(w) // 2], "max": w[-1]},
        "distinct_1": distinct_n(inputs_sample, 1),
        "distinct_2": distinct_n(inputs_sample, 2),
        "distinct_sample": len(inputs_sample),
        "near_duplicate_ratio": near_duplicates / n_records if n_records else 0.0,
        "languages": languages(inputs_sample),
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
    known = {k: v for k, v in out["languages"].items() if k != "unknown"}
    n_known = sum(known.values())
    if known and 1 - max(known.values()) / n_known > MIXED_WARN:
        mix = ", ".join(f"{k} {v / n_known:.0%}" for k, v in list(known.items())[:4])
        out["warnings"].append(f"mixed languages in the inputs ({mix}): is that intended?")
    if out["near_duplicate_ratio"] > NEAR_RATIO_WARN:
        out["warnings"].append(f"{out['near_duplicate_ratio']:.0%} of training records are near duplicates")
    return out
