"""Paired statistics for base-vs-tuned on the same examples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    b: examples only the first model got right; c: only the second. Under H0 each discordant pair is a
    fair coin, so p = P(X <= min(b, c)) * 2 for X ~ Binomial(b + c, 1/2), capped at 1.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # sum in log space: n can be large enough for 2**n to overflow a float
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    m = max(logs)
    tail = math.exp(m) * sum(math.exp(x - m) for x in logs)
    return min(1.0, 2.0 * tail)


@dataclass(frozen=True)
class PairedComparison:
    metric: str
    a: float
    b: float
    delta: float
    p_value: float
    ci95: tuple[float, float]
    only_a: int  # examples only A got right
    only_b: int  # examples only B got right
    n: int


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile CI of mean(b) - mean(a), resampling examples (pairs) with replacement."""
    import numpy as np

    x = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(x) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(x))  # bounded memory for large eval sets
    for s in range(0, resamples, chunk):
        e = min(resamples, s + chunk)
        idx = rng.integers(0, len(x), size=(e - s, len(x)))
        means[s:e] = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def compare_binary(
    metric: str, a: Sequence[bool], b: Sequence[bool], *, resamples: int = 10_000, seed: int = 0
) -> PairedComparison:
    """A vs B on the same examples: McNemar exact p-value and paired-bootstrap CI of the delta."""
    if len(a) != len(b):
        raise ValueError("paired comparison needs the same examples on both sides")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = len(a)
    ma = sum(a) / n if n else 0.0
    mb = sum(b) / n if n else 0.0
    return PairedComparison(
        metric=metric,
        a=ma,
        b=mb,
        delta=mb - ma,
        p_value=mcnemar_exact(only_a, only_b),
        ci95=paired_bootstrap_ci([float(v) for v in a], [float(v) for v in b], resamples=resamples, seed=seed),
        only_a=only_a,
        only_b=only_b,
        n=n,
    )


def paired_permutation_p(a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0) -> float:
    """Two-sided p-value of mean(b - a) = 0 by random sign flips of the paired differences (seeded),
    with the +1 correction so it is never 0."""
    import numpy as np

    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if len(d) == 0 or not np.any(d):
        return 1.0
    obs = abs(d.mean())
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // len(d))
    for s in range(0, resamples, chunk):
        e = min(resamples, s + chunk)
        signs = rng.integers(0, 2, size=(e - s, len(d))) * 2 - 1
        hits += int((np.abs((signs * d).mean(axis=1)) >= obs - 1e-12).sum())
    return (hits + 1) / (resamples + 1)


def cohens_dz(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Standardised mean of the paired differences; None when they do not vary (a constant shift has no
    spread to scale by) or there are fewer than two pairs."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    if len(d) < 2:
        return None
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    return m / sd if sd > 1e-9 * max(1.0, abs(m)) else None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): family-wise error control."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adj[i] = running
    return adj
