"""A job's last stage: base vs tuned on the held-out examples, paired, and a verdict in one sentence.

Run by the worker as its own process (`python -m tunelab.jobs.evaluate RUN_DIR`) after training. Answers that
come from a small set (at most 20 distinct short labels, each seen twice on average) are scored as
classification (accuracy, constrained to the labels); anything else as generation (token F1, ROUGE-L, chrF,
exact match). The headline metric is fixed before looking (accuracy, or token F1), so its own p-value is
reported as is; every other metric carries its Holm-adjusted p-value too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tunelab.config import load_config
from tunelab.evaluate.command import model_info, write_eval
from tunelab.evaluate.compare import ALPHA, compare_runs
from tunelab.evaluate.items import EvalItem, EvalSet, read_eval_file
from tunelab.evaluate.probes import run_probes
from tunelab.evaluate.run import EvalParams, evaluate_items
from tunelab.fsutil import atomic_write_json
from tunelab.govern.provenance import record_outputs
from tunelab.progress import Reporter

MAX_LABELS = 20


def labels_of(items: list[EvalItem]) -> tuple[str, ...]:
    refs = [(it.reference or "").strip() for it in items]
    distinct = sorted(set(refs))
    if (
        1 < len(distinct) <= MAX_LABELS
        and len(refs) >= 2 * len(distinct)
        and all(r and len(r.split()) <= 4 for r in distinct)
    ):
        return tuple(distinct)
    return ()


def evaluate_job(run_dir: Path) -> dict[str, Any]:
    from tunelab.models.generate import attach_adapter
    from tunelab.models.loading import load_model, load_tokenizer, resolve_model

    cfg = load_config(run_dir / "config.yaml")
    job = json.loads((run_dir / "job.json").read_text())
    x = job["tunelab"]
    path = cfg.data.eval[0] if cfg.data.eval else run_dir / "data" / "eval.jsonl"
    items = read_eval_file(path, "generation")
    labels = labels_of(items)
    if labels:
        items = read_eval_file(path, "classification")
    evset = EvalSet("held-out", "classification" if labels else "generation", items, [path], labels)
    params = EvalParams(batch_size=8, max_new_tokens=x.get("eval_max_new_tokens"), latency_samples=4,
                        seed=int(job["seed"]), limit=x.get("eval_limit"))  # fmt: skip
    rep = Reporter(events=run_dir / "events.jsonl", quiet=True)
    try:
        resolved = resolve_model(cfg.model.name)
        tok = load_tokenizer(resolved.path)
        out: dict[str, Path] = {}
        for side in ("base", "tuned"):
            if side == "base" or cfg.method.kind == "lora":
                model: Any = load_model(resolved.path)
                if side == "tuned":
                    model = attach_adapter(model, run_dir / "model")
            else:  # full fine-tuning: the tuned model is the whole checkpoint
                model = load_model(run_dir / "model")
            model.eval()
            rep.event("eval_start", side=side, items=min(len(items), params.limit or len(items)), task=evset.kind)
            res = evaluate_items(model, tok, evset, params, rep, side)
            probes = None
            if x.get("probes"):  # the same probe sets on both sides: compare pairs them item by item
                rep.event("info", message=f"probes on the {side} model: {', '.join(x['probes'])}")
                memo = None
                if "memorisation" in x["probes"]:  # the job's own training records (its run's data/train.jsonl)
                    from tunelab.evaluate.memorisation import load_data

                    prompts = [m["content"] for it in items for m in it.messages if m["role"] == "user"][:32]
                    memo = load_data(run_dir / "data" / "train.jsonl", None, prompts)
                probes = run_probes(model, tok, list(x["probes"]), evset, batch=params.batch_size, seed=params.seed,
                                    memo=memo)  # fmt: skip
            adapter = run_dir / "model" if side == "tuned" and cfg.method.kind == "lora" else None
            out[side] = run_dir / "eval" / side
            write_eval(out[side], res, evset, params, model_info(cfg.model.name, resolved, adapter), probes)
            del model
        comparison = compare_runs(out["base"], out["tuned"], seed=int(job["seed"]))
        atomic_write_json(run_dir / "eval" / "comparison.json", comparison)
        result = verdict(comparison, "accuracy" if labels else "token_f1", evset.kind)
        atomic_write_json(run_dir / "eval" / "verdict.json", result)
        if (run_dir / "manifest.json").is_file():  # the evaluation joins the run's provenance chain
            record_outputs(run_dir, [run_dir / "eval"])
        rep.event("eval_done", result=result)
        return result
    finally:
        rep.close()


def verdict(comparison: dict[str, Any], metric: str, kind: str) -> dict[str, Any]:
    row = next(r for r in comparison["paired"] if r["metric"] == metric)
    p, delta = float(row["p_value"]), float(row["delta"])
    lo, hi = (float(v) for v in row["ci95"])
    better = delta > 0 and p < ALPHA
    worse = delta < 0 and p < ALPHA
    word = "better than" if better else "worse than" if worse else "not significantly different from"
    sentence = (
        f"The tuned model is {word} the base on {comparison['n']} held-out examples: {metric} "
        f"{row['a']:.3f} -> {row['b']:.3f} ({delta:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}), "
        f"paired p = {p:.2g}."
    )
    changed = [
        {"metric": r["metric"], "delta": r["delta"], "p_holm": r.get("p_holm", r["p_value"])}
        for r in comparison["paired"]
        if r.get("significant")
    ]
    return {"kind": kind, "metric": metric, "base": row["a"], "tuned": row["b"], "delta": delta,
            "ci_low": lo, "ci_high": hi, "p_value": p, "better": better, "worse": worse,
            "n": comparison["n"], "significant_changes": changed, "verdict": sentence}  # fmt: skip


if __name__ == "__main__":
    evaluate_job(Path(sys.argv[1]))
