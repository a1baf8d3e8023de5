"""`tunelab quickstart`: model → data → audit → base eval → LoRA → tuned eval → report, in one run dir.

Each step is a call into its stage package; this file only orders them and writes the run directory.
`summary.json` is written last: a run directory without it is incomplete, whatever else it holds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RunConfig, load_config
from tunelab.data.audit import run_audit
from tunelab.data.canaries import Canary, manifest_flag, plant
from tunelab.data.tasks import BBC_LICENCE_ID, build_bbc_topics, get_task
from tunelab.errors import ConfigError, GateFailed
from tunelab.evaluate.classify import EvalRun, evaluate_classification
from tunelab.evaluate.command import model_info, weights_digest, write_eval
from tunelab.evaluate.compare import compare_runs
from tunelab.evaluate.memorisation import MemorisationData
from tunelab.evaluate.stats import compare_binary
from tunelab.fsutil import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_file
from tunelab.govern.card import model_card
from tunelab.govern.provenance import chain_digest, record_report, write_manifest
from tunelab.models.chat import encode_chat
from tunelab.models.loading import check_model_spec, load_model, load_tokenizer, resolve_model
from tunelab.paths import new_run_dir
from tunelab.progress import Reporter
from tunelab.report.html import write_report
from tunelab.report.verdict import verdict_text
from tunelab.train.engine import save_model, train


@dataclass
class QuickstartOptions:
    out: Path | None = None
    max_steps: int | None = None
    model: str | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)


def prepare_run_dir(out: Path | None, name: str) -> Path:
    """Create the run directory; refuse one that already holds a finished run or is not writable."""
    run_dir = out or new_run_dir(name)
    if (run_dir / "summary.json").exists():
        raise ConfigError("already holds a finished run; choose another --out", file=run_dir, field="--out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write here: {e.strerror}", file=run_dir, field="--out") from None
    return run_dir


def quickstart_config(opts: QuickstartOptions) -> RunConfig:
    cfg = load_config(opts.config, opts.overrides)
    if opts.max_steps is not None:
        if opts.max_steps < 1:
            raise ConfigError("must be at least 1", field="--max-steps")
        cfg.train.max_steps = opts.max_steps
    if opts.model is not None:
        cfg.model.name = opts.model
    if cfg.data.task is None or cfg.data.train:
        raise ConfigError("the quickstart runs a built-in task; use `tunelab train` for your own files", field="data")
    # The quickstart's data is BBC content for non-commercial research only. Its policy allows that licence
    # explicitly (and says so); a user's own policy does not unless they add it.
    if cfg.data.task == "bbc-topics" and BBC_LICENCE_ID not in cfg.policy.allowed_licences:
        cfg.policy.allowed_licences.append(BBC_LICENCE_ID)
    return cfg


def run_quickstart(opts: QuickstartOptions, reporter_factory: type[Reporter] = Reporter) -> dict[str, Any]:
    t_start = time.perf_counter()
    cfg = quickstart_config(opts)
    check_model_spec(cfg.model.name)
    run_dir = prepare_run_dir(opts.out, "quickstart")
    rep = reporter_factory(events=run_dir / "events.jsonl")
    try:
        summary = _run(cfg, run_dir, rep, t_start)
    except KeyboardInterrupt:
        rep.event("interrupted")
        raise
    except BaseException as e:
        rep.event("failed", error=str(e))
        raise
    finally:
        rep.close()
    return summary


def _run(cfg: RunConfig, run_dir: Path, rep: Reporter, t_start: float) -> dict[str, Any]:
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))
    rep.info(f"run directory: {run_dir}")

    rep.stage("1/6 model")
    with rep.status("loading the model (the first run converts the bundled GGUF once, ~40 s)"):
        resolved = resolve_model(cfg.model.name)
        tok = load_tokenizer(resolved.path)
        model = load_model(resolved.path, cfg.model.dtype)
    rep.info(f"{resolved.base_model_id} from {resolved.path}", model=resolved.name)

    rep.stage("2/6 task and data")
    task = get_task(cfg.data.task or "bbc-topics")
    data = build_bbc_topics(
        run_dir / "data",
        seed=cfg.data.seed,
        eval_per_class=cfg.data.eval_per_class,
        max_words=cfg.data.max_words,
    )
    lic = data.datacard["licence"]
    rep.info(f"{task.name}: {data.stats['articles']} articles, labels {', '.join(task.labels)}")
    rep.info(
        f"licence: [bold]{lic['id']}[/] — {lic['name']}. Allowed by the quickstart policy; "
        "the tuned adapter inherits this restriction (non-commercial research only)."
    )

    rep.stage("3/6 audit")
    audit = run_audit(
        [data.train],
        [data.eval],
        run_dir / "audit",
        policy=cfg.policy,
        tokenizer=tok,
        max_length=cfg.data.max_length,
    )
    a = audit.report
    rep.info(
        f"{a['records_total']} records: {a['records_valid']} valid, {a['duplicates']['exact']} exact duplicates "
        f"removed, {sum(c['contaminated'] for c in a['contamination'].values())} eval items overlapping train, "
        f"{a['quarantined']} quarantined → {run_dir / 'audit' / 'quarantine.jsonl'}"
    )
    if not audit.passed:
        raise GateFailed("data audit failed: " + "; ".join(a["reasons"]), file=run_dir / "audit" / "audit.json")
    eval_records = next(iter(audit.eval.values()))
    canaries = plant_canaries(cfg, run_dir, rep)
    memo = None
    if "memorisation" in cfg.eval.probes:
        memo = MemorisationData([r.messages for r in audit.train], canaries,
                                [r.messages[-2]["content"] for r in eval_records])  # fmt: skip

    rep.stage("4/6 evaluate base")
    base_eval = evaluate_classification(model, tok, task, eval_records, cfg.eval, rep, "base", memo)
    rep.info(f"base accuracy {base_eval.metrics.accuracy:.3f}")

    rep.stage("5/6 train (LoRA)")
    examples = [encode_chat(tok, r.messages) for r in audit.train]
    examples += [encode_chat(tok, c.messages()) for c in canaries for _ in range(cfg.data.canary_repeats)]
    trained = train(model, examples, cfg, rep, pad_id=int(tok.pad_token_id), run_dir=run_dir)
    save_model(trained.model, run_dir / "model", tok)
    rep.info(
        f"{cfg.train.max_steps} steps in {trained.train_s:.0f}s, {trained.tokens_per_s:.0f} tokens/s, "
        f"final loss {trained.curve[-1]['loss']:.3f}"
    )

    rep.stage("6/6 evaluate tuned")
    tuned_eval = evaluate_classification(trained.model, tok, task, eval_records, cfg.eval, rep, "tuned", memo)

    summary = _write_results(cfg, run_dir, resolved, data, audit.report, base_eval, tuned_eval, trained, t_start)
    rep.event("done", summary=summary)
    return summary


def plant_canaries(cfg: RunConfig, run_dir: Path, rep: Reporter) -> list[Canary]:
    canaries = plant(cfg.data.canaries, cfg.data.canary_repeats, cfg.data.seed, run_dir)
    if canaries:
        rep.info(f"{len(canaries)} canaries (random secrets) planted in the training data, "
                 f"{cfg.data.canary_repeats} times each: data/canaries.json")  # fmt: skip
    return canaries


def _write_results(
    cfg: RunConfig,
    run_dir: Path,
    resolved: Any,
    data: Any,
    audit: dict[str, Any],
    base_eval: EvalRun,
    tuned_eval: EvalRun,
    trained: Any,
    t_start: float,
) -> dict[str, Any]:
    task = data.task
    comp = compare_binary(
        "accuracy",
        [p["correct"] for p in base_eval.predictions],
        [p["correct"] for p in tuned_eval.predictions],
        resamples=cfg.eval.bootstrap_resamples,
        seed=cfg.eval.seed,
    )
    rows = []
    for b, t in zip(base_eval.predictions, tuned_eval.predictions, strict=True):
        keys = ("output", "predicted", "correct", "latency_s")
        rows.append(
            {
                "id": b["id"],
                "input": b["input"],
                "reference": b["reference"],
                "base": {k: b[k] for k in keys},
                "tuned": {k: t[k] for k in keys},
            }
        )
    atomic_write_jsonl(run_dir / "eval" / "predictions.jsonl", rows)
    # each side also as an eval directory of its own, as `tunelab eval` writes it: `tunelab compare
    # RUN/eval/base RUN/eval/tuned --gate ...` works on a quickstart run
    base_info = model_info(cfg.model.name, resolved, None)
    for ev, adapter in ((base_eval, None), (tuned_eval, run_dir / "model")):
        info = (
            {**base_info, "adapter": str(adapter), "adapter_sha256": weights_digest(adapter)} if adapter else base_info
        )
        write_eval(run_dir / "eval" / ev.name, ev.result, ev.evset, ev.params, info, ev.probes)
    full = compare_runs(
        run_dir / "eval" / "base",
        run_dir / "eval" / "tuned",
        resamples=cfg.eval.bootstrap_resamples,
        seed=cfg.eval.seed,
    )
    atomic_write_json(run_dir / "eval" / "compare.json", full)
    atomic_write_json(
        run_dir / "eval" / "metrics.json",
        {"base": base_eval.metrics.to_json(), "tuned": tuned_eval.metrics.to_json()},
    )
    comparison = {
        "metric": "accuracy",
        "delta": comp.delta,
        "p_value": comp.p_value,
        "test": "McNemar exact (two-sided)",
        "ci95": list(comp.ci95),
        "ci_method": f"paired bootstrap, {cfg.eval.bootstrap_resamples} resamples, seed {cfg.eval.seed}",
        "only_base_correct": comp.only_a,
        "only_tuned_correct": comp.only_b,
        "n": comp.n,
    }
    atomic_write_json(run_dir / "eval" / "comparison.json", comparison)
    eval_s = base_eval.eval_s + tuned_eval.eval_s
    summary: dict[str, Any] = {
        "task": task.name,
        "model": {
            "base_model": resolved.base_model_id,
            "path": str(resolved.path),
            "license": resolved.license,
        },
        "base": base_eval.summary(),
        "tuned": tuned_eval.summary(),
        "comparison": comparison,
        "train": {
            "steps": cfg.train.max_steps,
            "batch_size": cfg.batch.size * cfg.batch.grad_accum,
            "records": audit["train_records_after_cleaning"],
            "tokens_per_s": trained.tokens_per_s,
            "final_loss": trained.curve[-1]["loss"],
            "trainable_params": trained.trainable_params,
            "total_params": trained.total_params,
        },
        "data": {
            "licence": data.datacard["licence"]["id"],
            "licence_status": audit["licence"][0]["status"],
            "audit_verdict": audit["verdict"],
            "eval_items": tuned_eval.metrics.n,
        },
        "timings": {"total_s": 0.0, "train_s": trained.train_s, "eval_s": eval_s},
        "run_dir": str(run_dir),
    }
    summary["verdict"] = verdict_text(summary)

    card = model_card(
        base_model=resolved.base_model_id,
        base_license=resolved.license,
        task=task.name,
        labels=list(task.labels),
        dataset=data.datacard,
        results=summary,
        training={
            "method": method_text(cfg),
            "steps": cfg.train.max_steps,
            "batch size": cfg.batch.size * cfg.batch.grad_accum,
            "learning rate": cfg.optimizer.lr,
            "loss": "assistant tokens only",
            "training records": audit["train_records_after_cleaning"],
        },
        provenance={
            "train data sha256": sha256_file(data.train),
            "eval data sha256": sha256_file(data.eval),
            "base weights": resolved.source.get("gguf_sha256", str(resolved.path)),
            "run manifest": "manifest.json in the run directory",
        },
    )
    atomic_write_text(run_dir / "model" / "README.md", card)
    base_files = sorted(p for p in resolved.path.iterdir() if p.suffix in (".safetensors", ".json"))
    planted = manifest_flag(cfg.data.canaries, cfg.data.canary_repeats)
    # The manifest covers what the run measured and made; report.html and summary.json are derived from it.
    write_manifest(
        run_dir,
        inputs={
            "data": [data.train, data.eval],
            "base_model": base_files,
            "config": [run_dir / "config.yaml"],
            **({"canaries": [run_dir / "data" / "canaries.json"]} if cfg.data.canaries else {}),
        },
        outputs=[run_dir / "model", run_dir / "eval", run_dir / "audit", run_dir / "train"],
        extra={"base_model_source": resolved.source, "task": task.name, "canaries": planted},
    )
    summary["chain_sha256"] = chain_digest(json.loads((run_dir / "manifest.json").read_text(encoding="utf-8")))
    summary["timings"]["total_s"] = time.perf_counter() - t_start
    record_report(run_dir, write_report(run_dir, summary))
    atomic_write_json(run_dir / "summary.json", summary)  # last: its presence marks the run complete
    return summary


def method_text(cfg: RunConfig) -> str:
    m = cfg.method
    if m.kind == "full":
        return "full fine-tuning (every weight)"
    return f"LoRA r={m.r}, alpha={m.alpha} on {', '.join(m.target_modules)}"


def load_summary(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "summary.json"
    if not p.is_file():
        raise ConfigError("not a finished run directory (no summary.json)", file=run_dir, field="RUN_DIR")
    data: dict[str, Any] = json.loads(p.read_text())
    return data
