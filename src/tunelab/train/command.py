"""`tunelab train`: config → model → data → audit gate → training (resumable) → model/ + card + manifest.

Runs the same under `torchrun --nproc_per_node N` / `accelerate launch`: every process loads the model and
data, process 0 writes the run directory, and the engine splits each global batch between processes.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.config import RunConfig, build_config, load_config
from tunelab.data.audit import run_audit
from tunelab.data.canaries import make_canaries, manifest_flag, plant
from tunelab.data.preferences import Preference, read_preferences
from tunelab.data.tasks import BBC_LICENCE_ID, build_bbc_topics, datacard_path
from tunelab.errors import ConfigError, DataError, GateFailed, ResourceError
from tunelab.fsutil import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_file
from tunelab.govern.card import training_card
from tunelab.govern.provenance import write_manifest
from tunelab.models.chat import Encoded, encode_chat, encode_record
from tunelab.models.loading import check_model_spec, load_model, load_tokenizer, resolve_model
from tunelab.paths import new_run_dir
from tunelab.progress import Reporter
from tunelab.train.distributed import Dist
from tunelab.train.engine import evaluate_loss, save_model, train

PRESETS = ("quickstart", "image")


@dataclass
class TrainOptions:
    config: Path | None = None
    preset: str | None = None
    overrides: list[str] = field(default_factory=list)
    out: Path | None = None
    resume: Path | None = None
    max_steps: int | None = None
    force: bool = False
    mlflow: str | None = None


def resolve_config(opts: TrainOptions) -> RunConfig:
    if opts.resume is not None:
        if opts.config or opts.preset or opts.overrides:
            raise ConfigError(
                "a resumed run keeps its own config.yaml; give only --resume (and --max-steps)", field="--resume"
            )
        saved = opts.resume / "config.yaml"
        if not saved.is_file():
            raise ConfigError("not a training run directory (no config.yaml)", file=opts.resume, field="--resume")
        cfg = load_config(saved)
    else:
        if opts.config is not None and opts.preset is not None:
            raise ConfigError("give a CONFIG file or --preset, not both", field="--preset")
        if opts.config is None and opts.preset is None:
            raise ConfigError("give a CONFIG file or --preset quickstart", field="CONFIG")
        if opts.preset is not None and opts.preset not in PRESETS:
            raise ConfigError(f"unknown preset {opts.preset!r}; known: {', '.join(PRESETS)}", field="--preset")
        preset = ["task=image"] if opts.preset == "image" else []
        cfg = load_config(opts.config, [*preset, *opts.overrides])
        base = opts.config.parent if opts.config else Path.cwd()
        cfg.data.train = [p if p.is_absolute() else (base / p) for p in cfg.data.train]
        cfg.data.eval = [p if p.is_absolute() else (base / p) for p in cfg.data.eval]
        if cfg.data.train:
            cfg.data.task = None
        if cfg.data.task == "bbc-topics" and BBC_LICENCE_ID not in cfg.policy.allowed_licences:
            cfg.policy.allowed_licences.append(BBC_LICENCE_ID)  # the quickstart's data, allowed by name
        if cfg.data.task is None and not cfg.data.train:
            raise ConfigError("no training data: set data.train (files) or data.task", field="data.train")
    if opts.max_steps is not None:
        if opts.max_steps < 1:
            raise ConfigError("must be at least 1", field="--max-steps")
        cfg.train.max_steps = opts.max_steps
    return cfg


def run_dir_for(opts: TrainOptions, dist: Dist) -> Path:
    if opts.resume is not None:
        return opts.resume
    chosen = None
    if dist.main:
        run_dir = opts.out or new_run_dir("train")
        if (run_dir / "summary.json").exists() or (run_dir / "checkpoints").exists():
            raise ConfigError("already holds a training run; use --resume or another --out", file=run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create: {e.strerror}", file=run_dir, field="--out") from None
        chosen = str(run_dir)
    return Path(dist.gather(chosen)[0])


Body = Callable[[RunConfig, TrainOptions, Path, Reporter, Dist, float], dict[str, Any]]


def run_train(
    opts: TrainOptions, reporter_factory: type[Reporter] = Reporter, body: Body | None = None
) -> dict[str, Any]:
    """The run directory, events and failure reporting around `body` (the text pipeline unless another
    modality passes its own: `images.command` does)."""
    t0 = time.perf_counter()
    cfg = resolve_config(opts)
    if body is None:
        check_model_spec(cfg.model.name)
    dist = Dist.from_env()
    try:
        run_dir = run_dir_for(opts, dist)
        rep = reporter_factory(events=run_dir / "events.jsonl") if dist.main else Reporter(quiet=True)
        try:
            return (body or _run)(cfg, opts, run_dir, rep, dist, t0)
        except BaseException as e:
            rep.event("interrupted" if isinstance(e, KeyboardInterrupt) else "failed", error=str(e))
            raise
        finally:
            rep.close()
    finally:
        dist.close()


def _data_files(cfg: RunConfig, run_dir: Path, dist: Dist) -> tuple[list[Path], list[Path], dict[str, Any] | None]:
    if cfg.data.task is None:
        for p in [*cfg.data.train, *cfg.data.eval]:
            if not p.is_file():
                raise DataError("no such file", file=p, field="data.train" if p in cfg.data.train else "data.eval")
        return list(cfg.data.train), list(cfg.data.eval), None
    if cfg.data.task != "bbc-topics":
        raise ConfigError(f"unknown task {cfg.data.task!r}", field="data.task")
    if dist.main:
        built = build_bbc_topics(
            run_dir / "data", seed=cfg.data.seed, eval_per_class=cfg.data.eval_per_class, max_words=cfg.data.max_words
        )
        card: dict[str, Any] | None = built.datacard
    dist.barrier()
    if not dist.main:
        card = None
    return [run_dir / "data" / "train.jsonl"], [run_dir / "data" / "eval.jsonl"], card


def audit_gate(report: dict[str, Any], force: bool, run_dir: Path, rep: Reporter) -> bool:
    """Stop (exit 1) when the audit failed, unless --force; returns whether training goes on by force."""
    if report["verdict"] == "pass":
        return False
    if not force:
        raise GateFailed(
            "data audit failed: " + "; ".join(report["reasons"]) + " (--force trains anyway and records it)",
            file=run_dir / "audit" / "audit.json",
        )
    rep.info("[yellow]the data audit failed; training anyway because of --force (recorded in the manifest)[/]")
    return True


def check_inputs_unchanged(run_dir: Path, files: list[Path]) -> None:
    """A resumed run must train on the same bytes as the run it continues."""
    recorded = json.loads((run_dir / "train" / "inputs.json").read_text())
    now = {str(p): sha256_file(p) for p in files}
    for path, digest in recorded.items():
        if now.get(path) != digest:
            raise DataError("changed since the run started; resuming would train on other data", file=path)


def _run(cfg: RunConfig, opts: TrainOptions, run_dir: Path, rep: Reporter, dist: Dist, t0: float) -> dict[str, Any]:
    resume = opts.resume is not None
    if dist.main and not resume:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))
    rep.info(f"run directory: {run_dir}" + (" (resuming)" if resume else ""))
    if dist.enabled:
        rep.info(f"{dist.world} processes; global batch {cfg.batch.size * cfg.batch.grad_accum} examples per step")

    with rep.status("loading the model"):
        resolved = resolve_model(cfg.model.name)
        tok = load_tokenizer(resolved.path)
        model = load_model(resolved.path, cfg.model.dtype)
    rep.info(f"model {resolved.base_model_id} from {resolved.path}")

    if resume:
        train_files, eval_files = resume_files(run_dir)
        check_inputs_unchanged(run_dir, [*train_files, *eval_files])
        card = None
    else:
        train_files, eval_files, card = _data_files(cfg, run_dir, dist)
    audit_dir = run_dir / "audit" if dist.main else Path(tempfile.mkdtemp(prefix="tunelab-audit-"))
    dpo = cfg.method.objective == "dpo"
    prefs: dict[tuple[str, int], Preference] = {}
    audited = train_files
    if dpo:  # the audit checks each prompt + chosen answer as a chat record; pairs follow their fate
        derived_dir = run_dir / "data" / "dpo" if dist.main else Path(tempfile.mkdtemp(prefix="tunelab-dpo-"))
        audited, prefs = _preference_chats(train_files, derived_dir, audit_dir / "preferences-quarantine.jsonl", rep)
    audit = run_audit(
        audited,
        eval_files,
        audit_dir,
        policy=cfg.policy,
        tokenizer=tok,
        max_length=cfg.data.max_length,
        fmt=cfg.data.format,
        workers=1 if dist.enabled else None,
    )
    a = audit.report
    rep.info(
        f"audit: {a['records_valid']} of {a['records_total']} records valid, {a['quarantined']} quarantined, "
        f"{a['duplicates']['exact']} exact duplicates removed; verdict {a['verdict']}"
    )
    forced = audit_gate(a, opts.force, run_dir, rep)
    if dist.main and not resume:
        inputs = {str(p): sha256_file(p) for p in [*train_files, *eval_files]}
        atomic_write_json(run_dir / "train" / "inputs.json", inputs)

    examples: list[Any]
    if dpo:
        examples = _pairs(tok, audit.train, prefs, cfg.data.max_length, rep)
    else:
        examples = [encode_record(tok, r.messages) for r in audit.train if r.messages]
    canaries = []
    if cfg.data.canaries:
        if dpo:
            raise ConfigError("data.canaries plants chat answers; DPO trains on preference pairs",
                              field="data.canaries")  # fmt: skip
        n, reps, seed = cfg.data.canaries, cfg.data.canary_repeats, cfg.data.seed
        canaries = plant(n, reps, seed, run_dir) if dist.main else make_canaries(n, seed)
        examples += [encode_chat(tok, c.messages()) for c in canaries for _ in range(cfg.data.canary_repeats)]
        rep.info(f"{len(canaries)} canaries planted, {cfg.data.canary_repeats} times each: data/canaries.json")
    if not examples:
        raise DataError("no trainable records after the audit", file=train_files[0])
    tracker = _mlflow(opts.mlflow, cfg, run_dir) if (opts.mlflow and dist.main) else None
    res = _train_or_explain(model, examples, cfg, rep, _pad_id(tok), run_dir, resume, dist)
    if tracker:
        for row in res.curve:
            tracker.log_metrics({"loss": row["loss"], "lr": row["lr"]}, step=row["step"])

    eval_loss = None
    eval_examples = [encode_record(tok, r.messages) for recs in audit.eval.values() for r in recs if r.messages]
    if eval_examples and not dpo:
        eval_loss = evaluate_loss(res.model, eval_examples, cfg.batch.max_tokens)
    if not dist.main:
        return {}
    save_model(res.model, run_dir / "model", tok)
    summary: dict[str, Any] = {
        "method": cfg.method.kind,
        "objective": cfg.method.objective,
        "steps": cfg.train.max_steps,
        "global_batch": cfg.batch.size * cfg.batch.grad_accum,
        "processes": dist.world,
        "examples": len(examples),
        "final_loss": res.curve[-1]["loss"],
        "eval_loss": eval_loss,
        "real_tokens": res.real_tokens,
        "trained_tokens": res.trained_tokens,
        "train_s": res.train_s,
        "tokens_per_s": res.tokens_per_s,
        "peak_rss_gb": res.peak_rss_gb,
        "precision": res.precision,
        "attention": res.attention,
        "packing": cfg.batch.packing,
        "trainable_params": res.trainable_params,
        "total_params": res.total_params,
        "resumed_from_step": res.resumed_from,
        "skipped_checkpoints": res.skipped_checkpoints,
        "audit_verdict": a["verdict"],
        "forced": forced,
        "run_dir": str(run_dir),
    }
    datacard = card or _first_datacard(a)
    atomic_write_text(
        run_dir / "model" / "README.md",
        training_card(
            base_model=resolved.base_model_id,
            base_license=resolved.license,
            method=cfg.method,
            datacard=datacard,
            summary=summary,
            config=cfg.dump(),
            provenance={
                "train data sha256": ", ".join(sha256_file(p)[:16] for p in train_files),
                "base weights": resolved.source.get("gguf_sha256", str(resolved.path)),
                "run manifest": "manifest.json in the run directory",
            },
        ),
    )
    if tracker:
        tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)})
        tracker.end()
    base_files = sorted(p for p in resolved.path.iterdir() if p.suffix in (".safetensors", ".json"))
    write_manifest(
        run_dir,
        inputs={"data": [*train_files, *eval_files], "base_model": base_files, "config": [run_dir / "config.yaml"],
                **({"canaries": [run_dir / "data" / "canaries.json"]} if canaries else {})},
        outputs=[run_dir / "model", run_dir / "train", run_dir / "audit"],
        extra={
            "base_model_source": resolved.source,
            "audit": {"verdict": a["verdict"], "forced": forced, "reasons": a.get("reasons", [])},
            "resumed_from_step": res.resumed_from,
            "canaries": manifest_flag(cfg.data.canaries, cfg.data.canary_repeats),
        },
    )
    summary["total_s"] = time.perf_counter() - t0
    atomic_write_json(run_dir / "summary.json", summary)  # last: its presence marks the run complete
    rep.event("done", summary=summary)
    return summary


def _train_or_explain(
    model: Any, examples: list[Any], cfg: RunConfig, rep: Reporter, pad_id: int, run_dir: Path, resume: bool, dist: Dist
) -> Any:
    """Train; out of memory or disk ends with one line saying what to change and which checkpoint is intact."""
    import errno

    import torch

    from tunelab.train.checkpoint import latest_good

    def last_good() -> str:
        found = latest_good(run_dir / "checkpoints")
        return (
            f"the last good checkpoint is {found.path.name}; `tunelab train --resume {run_dir}` continues"
            if (found)
            else "no checkpoint was written yet"
        )

    try:
        return train(model, examples, cfg, rep, pad_id=pad_id, run_dir=run_dir, resume=resume, dist=dist)
    except (MemoryError, torch.OutOfMemoryError):
        raise ResourceError(
            f"out of memory; lower batch.max_tokens (now {cfg.batch.max_tokens}) or batch.size, or set "
            f"train.gradient_checkpointing=true; {last_good()}",
            field="batch.max_tokens",
        ) from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceError(f"disk full ({e.filename or run_dir}); {last_good()}", file=run_dir) from None
        raise


def _preference_chats(
    files: list[Path], out_dir: Path, quarantine: Path, rep: Reporter
) -> tuple[list[Path], dict[tuple[str, int], Preference]]:
    """Write each preference file's prompt + chosen conversations as chat JSONL (with the source's datacard)
    for the audit; rows that are not valid pairs go to `quarantine` with their file, line and field."""
    import shutil

    out_dir.mkdir(parents=True, exist_ok=True)
    derived: list[Path] = []
    prefs: dict[tuple[str, int], Preference] = {}
    bad: list[dict[str, Any]] = []
    for i, f in enumerate(files):
        target = out_dir / f"{i:02d}-{f.stem}.chosen.jsonl"
        rows: list[dict[str, Any]] = []
        for item in read_preferences(f):
            if isinstance(item, Preference):
                rows.append({"id": item.id, "messages": item.conversation(item.chosen)})
                prefs[(str(target), len(rows))] = item
            else:
                bad.append(item.to_json())
        if not rows:
            raise DataError("no valid {prompt, chosen, rejected} rows", file=f)
        atomic_write_jsonl(target, rows)
        card = datacard_path(f)
        if card.is_file():
            shutil.copyfile(card, datacard_path(target))
        derived.append(target)
    atomic_write_jsonl(quarantine, bad)
    if bad:
        first = bad[0]
        rep.info(
            f"[yellow]{len(bad)} preference rows quarantined → {quarantine} "
            f"(first: {first['file']}:{first['line']} {first['field']}: {first['reason']})[/]"
        )
    return derived, prefs


def _pairs(
    tok: Any, kept: list[Any], prefs: dict[tuple[str, int], Preference], max_length: int, rep: Reporter
) -> list[tuple[Encoded, Encoded]]:
    """(chosen, rejected) encodings of the pairs whose chosen conversation passed the audit."""
    pairs = []
    too_long = 0
    for r in kept:
        p = prefs[(r.file, r.line)]
        rejected = encode_chat(tok, p.conversation(p.rejected))
        if len(rejected.input_ids) > max_length:
            too_long += 1
            continue
        pairs.append((encode_chat(tok, p.conversation(p.chosen)), rejected))
    if too_long:
        rep.info(f"[yellow]{too_long} pairs dropped: the rejected answer exceeds data.max_length={max_length}[/]")
    return pairs


def resume_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    if cfg.data.task is not None and not cfg.data.train:
        return [run_dir / "data" / "train.jsonl"], [run_dir / "data" / "eval.jsonl"]
    return list(cfg.data.train), list(cfg.data.eval)


def _pad_id(tok: Any) -> int:
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad or 0)


def _first_datacard(audit: dict[str, Any]) -> dict[str, Any]:
    lic = audit["licence"][0] if audit.get("licence") else {}
    return {"name": "user data", "licence": {"id": lic.get("id") or "unknown", "name": lic.get("status", "")}}


class _Tracker:
    def __init__(self, mlflow: Any) -> None:
        self.mlflow = mlflow

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def end(self) -> None:
        self.mlflow.end_run()


def _mlflow(uri: str, cfg: RunConfig, run_dir: Path) -> _Tracker:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("MLflow is not installed: pip install mlflow", field="--mlflow") from None
    mlflow.set_tracking_uri(uri)
    mlflow.start_run(run_name=run_dir.name)
    flat = {f"{s}.{k}": v for s, sec in cfg.dump().items() if isinstance(sec, dict) for k, v in sec.items()}
    mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})
    return _Tracker(mlflow)
