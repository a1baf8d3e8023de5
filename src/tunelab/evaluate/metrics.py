"""Classification metrics where an unparseable answer is simply wrong (never dropped), and a detector's TPR at
a capped FPR."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunelab.data.text import normalise_words

UNPARSED = "(unparsed)"


def parse_label(text: str, labels: Sequence[str], aliases: dict[str, str] | None = None) -> str | None:
    """The one label `text` names (whole words, case/punctuation-insensitive; a plural `s` is accepted;
    aliases map other words to labels, `technology` -> `tech`). None when it names none, or several:
    an answer that echoes the label list has not chosen."""
    norm = f" {normalise_words(text)} "
    names = {normalise_words(lab): lab for lab in labels}
    for alias, lab in (aliases or {}).items():
        names.setdefault(normalise_words(alias), lab)
    found = {lab for name, lab in names.items() if re.search(rf" {re.escape(name)}s? ", norm)}
    return found.pop() if len(found) == 1 else None


@dataclass
class ClassMetrics:
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, int]]  # gold -> predicted (incl. UNPARSED) -> count
    unparsed: int
    n: int

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class,
            "confusion": self.confusion,
            "unparsed": self.unparsed,
            "n": self.n,
        }


def classification_metrics(gold: Sequence[str], pred: Sequence[str | None], labels: Sequence[str]) -> ClassMetrics:
    n = len(gold)
    cols = [*labels, UNPARSED]
    confusion = {g: dict.fromkeys(cols, 0) for g in labels}
    for g, p in zip(gold, pred, strict=True):
        confusion.setdefault(g, dict.fromkeys(cols, 0))[p if p is not None else UNPARSED] += 1
    per_class: dict[str, dict[str, float]] = {}
    for lab in labels:
        tp = confusion[lab][lab]
        fp = sum(confusion[g][lab] for g in confusion if g != lab)
        fn = sum(v for k, v in confusion[lab].items() if k != lab)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    correct = sum(1 for g, p in zip(gold, pred, strict=True) if g == p)
    return ClassMetrics(
        accuracy=correct / n if n else 0.0,
        macro_f1=sum(c["f1"] for c in per_class.values()) / len(labels) if labels else 0.0,
        per_class=per_class,
        confusion=confusion,
        unparsed=sum(1 for p in pred if p is None),
        n=n,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) without numpy."""
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def wilson_upper(count: int, n: int, z: float) -> float:
    """The Wilson score interval's upper end for a rate of `count` in `n` at `z` standard errors (z=0: the rate)."""
    if n == 0:
        return 1.0
    p, z2 = count / n, z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (centre + half) / (1 + z2 / n)


def threshold_at_fpr(scores: Sequence[float], labels: Sequence[bool], max_fpr: float, *, z: float = 0.0) -> float:
    """The lowest threshold (flag at score >= it) whose FPR on these negatives is at most `max_fpr`: the one
    that keeps the most positives under that cap. With `z` > 0 the FPR's Wilson upper bound at z standard
    errors must be under the cap instead: a margin for the sampling error of few negatives, so that the rate on
    other texts of the same kind stays under it too."""
    neg = sorted((float(s) for s, a in zip(scores, labels, strict=True) if not a), reverse=True)
    k = math.floor(max_fpr * len(neg) + 1e-9)  # this many negatives may be flagged
    while k > 0 and z > 0 and wilson_upper(k, len(neg), z) > max_fpr:
        k -= 1
    if k >= len(neg):
        return min(map(float, scores), default=0.0)
    return math.nextafter(neg[k], math.inf)


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties count half)."""
    pos = [float(s) for s, a in zip(scores, labels, strict=True) if a]
    neg = sorted(float(s) for s, a in zip(scores, labels, strict=True) if not a)
    if not pos or not neg:
        return math.nan
    import bisect

    below = [bisect.bisect_left(neg, p) for p in pos]
    won = sum(b + 0.5 * (bisect.bisect_right(neg, p) - b) for b, p in zip(below, pos, strict=True))
    return won / (len(pos) * len(neg))


def detection_rates(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict[str, float]:
    """TPR and FPR when everything scoring >= `threshold` is flagged (nan for a class that is absent)."""
    tp = fp = pos = neg = 0
    for s, a in zip(scores, labels, strict=True):
        if a:
            pos += 1
            tp += s >= threshold
        else:
            neg += 1
            fp += s >= threshold
    return {"tpr": tp / pos if pos else math.nan, "fpr": fp / neg if neg else math.nan}


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[bool], max_fpr: float = 0.05) -> dict[str, float]:
    """The best TPR over thresholds whose FPR <= `max_fpr`, with that threshold. Chosen on these same scores,
    so it is an upper bound on what a threshold fixed beforehand would give."""
    th = threshold_at_fpr(scores, labels, max_fpr)
    return {**detection_rates(scores, labels, th), "threshold": th}
