"""`tunelab bench guard`: the injection guard on its labelled set (TPR at FPR <= 5%, per split) and the time
the input guards (injection rules, PII detectors, moderation lexicon) add to a request."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from tunelab.bench.guard_set import labelled
from tunelab.fsutil import atomic_write_json
from tunelab.serve.guards import GuardConfig, check_input, injection_score


def tpr_at_fpr(scores: list[tuple[float, bool]], max_fpr: float = 0.05) -> dict[str, float]:
    """The best TPR over thresholds whose FPR <= max_fpr (a threshold flags score >= it)."""
    pos = sum(1 for _, a in scores if a)
    neg = len(scores) - pos
    best = {"tpr": 0.0, "fpr": 0.0, "threshold": 1.01}
    for th in sorted({s for s, _ in scores} | {1.01}, reverse=True):
        tp = sum(1 for s, a in scores if a and s >= th)
        fp = sum(1 for s, a in scores if not a and s >= th)
        tpr, fpr = tp / pos if pos else 0.0, fp / neg if neg else 0.0
        if fpr <= max_fpr and tpr >= best["tpr"]:
            best = {"tpr": tpr, "fpr": fpr, "threshold": th}
    return best


def bench_guard(out: Path, *, repeats: int = 20) -> dict[str, Any]:
    rows = labelled()
    splits: dict[str, Any] = {}
    for split in sorted({r[2] for r in rows}):
        scored = [(injection_score(t)[0], a) for t, a, s in rows if s == split]
        at_default = {
            "tpr": sum(1 for s, a in scored if a and s >= 0.5) / max(1, sum(1 for _, a in scored if a)),
            "fpr": sum(1 for s, a in scored if not a and s >= 0.5) / max(1, sum(1 for _, a in scored if not a)),
        }
        splits[split] = {"n": len(scored), "at_fpr_5pct": tpr_at_fpr(scored), "at_threshold_0.5": at_default}
    cfg = GuardConfig()
    texts = [t for t, _, _ in rows]
    per: list[float] = []
    for _ in range(repeats):
        for t in texts:
            t0 = time.perf_counter()
            check_input(t, cfg)
            per.append((time.perf_counter() - t0) * 1000)
    per.sort()
    result: dict[str, Any] = {
        "bench": "guard",
        "splits": splits,
        "note": "dev: written with the rules; seen: once held out, then the rules were revised with it in view; "
        "fresh: written after the last revision, scored without changing the rules since (the honest estimate)",
        "input_guard_ms": {
            "mean": statistics.fmean(per),
            "p50": per[len(per) // 2],
            "p99": per[int(len(per) * 0.99) - 1],
            "max": per[-1],
        },
        "targets": {"input_guard_ms_max": 5.0},
    }
    result["met"] = {"latency": result["input_guard_ms"]["p99"] < 5.0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench-guard.json", result)
    return result
