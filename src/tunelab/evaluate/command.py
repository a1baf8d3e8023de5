"""`tunelab eval`: one model (plus an optional adapter) on a built-in task or the user's file.

Writes into the output directory:
  predictions.jsonl  one line per item: id, input, reference, output, per-metric scores (byte-identical
                     for the same model, data and seed)
  latency.jsonl      time to first token and request time of the sampled single requests
  metrics.json       the metrics, the latency summary, model and data sha256, seed and parameters
                     (written last: a directory without it is an unfinished eval)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.tasks import BBC_TOPICS, build_bbc_headlines, build_bbc_topics
from tunelab.errors import ConfigError, DataError
from tunelab.evaluate.classify import LABEL_ALIASES
from tunelab.evaluate.items import EvalSet, read_eval_file
from tunelab.evaluate.probes import run_probes
from tunelab.evaluate.run import EvalParams, EvalResult, evaluate_items
from tunelab.fsutil import atomic_write_json, atomic_write_jsonl, dir_digest, sha256_file
from tunelab.models.loading import check_model_spec, load_model, load_tokenizer, resolve_model
from tunelab.paths import new_run_dir
from tunelab.progress import Reporter

BUILTIN_TASKS = {
    "bbc-topics": "classification: a BBC article's topic (5 labels), the quickstart's 200 held-out articles",
    "bbc-headlines": "multiple choice: which of 5 headlines (same topic) belongs to a 120-word BBC article",
}


@dataclass
class EvalOptions:
    model: str | None = None
    adapter: Path | None = None
    task: str | None = None
    data: Path | None = None
    kind: str = "auto"
    labels: list[str] = field(default_factory=list)
    system: str | None = None
    out: Path | None = None
    params: EvalParams = field(default_factory=EvalParams)
    probes: list[str] = field(default_factory=list)
    judge: str | None = None  # a local model that judges faithfulness ("default" = the bundled one)
    train: Path | None = None  # memorisation probe: the training records (chat JSONL)
    canaries: Path | None = None  # memorisation probe: a run's data/canaries.json


def _prompt_text(item: Any) -> str:
    msgs = getattr(item, "messages", None) or []
    users = [m["content"] for m in msgs if m.get("role") == "user"]
    return str(users[-1] if users else getattr(item, "text", "") or "")


def load_eval_set(opts: EvalOptions, data_dir: Path) -> EvalSet:
    if (opts.task is None) == (opts.data is None):
        raise ConfigError("give exactly one of --task NAME or --data FILE", field="--task/--data")
    if opts.task is not None:
        if opts.task == "bbc-topics":
            d = build_bbc_topics(data_dir, seed=opts.params.seed)
            items = read_eval_file(d.eval, "classification")
            return EvalSet("bbc-topics", "classification", items, [d.eval], BBC_TOPICS.labels)
        if opts.task == "bbc-headlines":
            p = build_bbc_headlines(data_dir, seed=opts.params.seed)
            return EvalSet("bbc-headlines", "multiple_choice", read_eval_file(p, "multiple_choice"), [p])
        raise ConfigError(f"unknown task {opts.task!r} (known: {', '.join(BUILTIN_TASKS)})", field="--task")
    assert opts.data is not None
    items = read_eval_file(opts.data, opts.kind)
    kind = items[0].kind
    if opts.labels and kind != "classification":
        raise ConfigError(f"--labels is for classification; {opts.data} holds {kind} items", field="--labels")
    return EvalSet(opts.data.stem, kind, items, [opts.data], tuple(opts.labels), opts.system)


def weights_digest(path: Path) -> str:
    """sha256 over the (name, sha256) of every weight and config file of a model or adapter directory."""
    suffixes = (".safetensors", ".bin", ".json")
    if not any(p.is_file() and p.suffix in suffixes for p in path.iterdir()):
        raise DataError("no weight files", file=path)
    return dir_digest(path, suffixes)


def run_eval(opts: EvalOptions, reporter_factory: type[Reporter] = Reporter) -> dict[str, Any]:
    from tunelab.models.generate import attach_adapter

    check_model_spec(opts.model)
    out = opts.out or new_run_dir("eval")
    if (out / "metrics.json").exists():
        raise ConfigError("already holds a finished eval; choose another --out", file=out, field="--out")
    out.mkdir(parents=True, exist_ok=True)
    rep = reporter_factory(events=out / "events.jsonl")
    try:
        evset = load_eval_set(opts, out / "data")
        rep.info(f"{evset.name}: {len(evset.items)} {evset.kind} items")
        resolved = resolve_model(opts.model)
        tok = load_tokenizer(resolved.path)
        model: Any = load_model(resolved.path)
        if opts.adapter is not None:
            model = attach_adapter(model, opts.adapter)
        model.eval()
        params = opts.params
        judge_info = None
        if opts.judge:
            check_model_spec(None if opts.judge == "default" else opts.judge)
            jr = resolve_model(None if opts.judge == "default" else opts.judge)
            params.judge = (load_model(jr.path), load_tokenizer(jr.path))
            judge_info = {"spec": opts.judge, "path": str(jr.path), "weights_sha256": weights_digest(jr.path)}
        if evset.name in LABEL_ALIASES and not params.aliases:
            params.aliases = LABEL_ALIASES[evset.name]
        res = evaluate_items(model, tok, evset, params, rep, "tuned" if opts.adapter else "base")
        probes = {}
        if opts.probes:
            with rep.status(f"probes: {', '.join(opts.probes)}"):
                memo = None
                if "memorisation" in opts.probes:
                    if opts.train is None:
                        raise ConfigError("the memorisation probe needs --train FILE (the training records)",
                                          field="--train")  # fmt: skip
                    from tunelab.evaluate.memorisation import load_data

                    memo = load_data(opts.train, opts.canaries, [_prompt_text(it) for it in evset.items][:32])
                probes = run_probes(model, tok, opts.probes, evset, batch=params.batch_size, seed=params.seed,
                                    memo=memo)  # fmt: skip
        info = model_info(opts.model, resolved, opts.adapter)
        if judge_info:
            info["judge"] = judge_info
        report = write_eval(out, res, evset, params, info, probes)
    finally:
        rep.close()
    return report


def model_info(spec: str | None, resolved: Any, adapter: Path | None) -> dict[str, Any]:
    return {
        "spec": spec or "default",
        "base_model": resolved.base_model_id,
        "path": str(resolved.path),
        "weights_sha256": weights_digest(resolved.path),
        "adapter": str(adapter) if adapter else None,
        "adapter_sha256": weights_digest(adapter) if adapter else None,
    }


def write_eval(
    out: Path,
    res: EvalResult,
    evset: EvalSet,
    params: EvalParams,
    model: dict[str, Any],
    probes: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """The eval directory `tunelab compare` reads (probe rows under probes/); metrics.json last."""
    from tunelab import __version__

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out / "predictions.jsonl", res.rows)
    atomic_write_jsonl(out / "latency.jsonl", res.timings)
    for name, (rows, _) in (probes or {}).items():
        atomic_write_jsonl(out / "probes" / f"{name}.jsonl", rows)
    report = {
        "task": evset.name,
        "kind": res.kind,
        "n": len(res.rows),
        "metrics": res.metrics,
        "latency": res.latency,
        "probes": {name: summary for name, (_, summary) in (probes or {}).items()},
        "warnings": res.warnings,
        "model": model,
        "data": {"files": [{"path": str(p), "sha256": sha256_file(p)} for p in evset.files]},
        "seed": params.seed,
        "params": {
            "batch_size": params.batch_size,
            "max_new_tokens": params.new_tokens(res.kind),
            "latency_samples": params.latency_samples,
            "limit": params.limit,
            "decoding": "greedy",
        },
        "predictions_sha256": sha256_file(out / "predictions.jsonl"),
        "eval_s": res.eval_s,
        "tunelab_version": __version__,
        "out": str(out),
    }
    atomic_write_json(out / "metrics.json", report)
    return report
