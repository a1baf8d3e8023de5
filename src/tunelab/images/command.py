"""`tunelab train` with `task: image`: base UNet → image audit (gate) → LoRA training (resumable, DDP) →
model/ (PEFT adapter + class slots + card) → paired base-vs-tuned evaluation → report.html + manifest.

The run directory has the text pipeline's layout (config.yaml, audit/, checkpoints/, model/, eval/,
report.html, manifest.json, summary.json last), so `govern verify`, the report and the jobs API read it the same way.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tunelab.config import RunConfig
from tunelab.errors import ConfigError, DataError, ModelError
from tunelab.fsutil import atomic_write_json, atomic_write_text, dir_digest, sha256_file
from tunelab.govern.provenance import record_report, write_manifest
from tunelab.images.audit import run_image_audit
from tunelab.images.base import (
    BASE_CLASSES,
    DEFAULT_IMAGE_MODEL,
    default_image_base,
    digits,
    write_digits_task,
)
from tunelab.images.data import stack, to_tensor
from tunelab.images.diffusion import sample
from tunelab.images.evaluate import EvalInputs, evaluate_pair
from tunelab.images.judge import train_judge
from tunelab.images.report import write_image_report
from tunelab.images.sd import (
    class_like,
    encode_images,
    encode_text,
    is_pipeline,
    load_part,
    load_pipeline,
    sample_text,
)
from tunelab.images.train import prepare, save_adapter, train_unet
from tunelab.images.unet import ImageMeta, load_base
from tunelab.progress import Reporter
from tunelab.train.command import TrainOptions, audit_gate, check_inputs_unchanged, resume_files, run_train
from tunelab.train.distributed import Dist

TASKS = ("digits-5to9",)


def run_image_train(opts: TrainOptions, reporter_factory: type[Reporter] = Reporter) -> dict[str, Any]:
    return run_train(opts, reporter_factory, body=_run)


def resolve_base(spec: str | None, rep: Reporter) -> Path:
    if spec is None or spec in ("default", DEFAULT_IMAGE_MODEL):
        return default_image_base(rep)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelError("no such image model directory", file=path, field="model.name")
    return path


def _data_files(cfg: RunConfig, run_dir: Path, dist: Dist) -> tuple[list[Path], list[Path]]:
    if cfg.data.task is None:
        for p in [*cfg.data.train, *cfg.data.eval]:
            if not p.exists():
                raise DataError(
                    "no such file or folder", file=p, field="data.train" if p in cfg.data.train else "data.eval"
                )
        return list(cfg.data.train), list(cfg.data.eval)
    if cfg.data.task not in TASKS:
        raise ConfigError(f"unknown image task {cfg.data.task!r}; known: {', '.join(TASKS)}", field="data.task")
    if dist.main:
        write_digits_task(run_dir / "data", seed=cfg.data.seed)
    dist.barrier()
    return [run_dir / "data" / "train.jsonl"], [run_dir / "data" / "eval.jsonl"]


def _run(cfg: RunConfig, opts: TrainOptions, run_dir: Path, rep: Reporter, dist: Dist, t0: float) -> dict[str, Any]:
    import torch

    resume = opts.resume is not None
    rep.info(f"run directory: {run_dir}" + (" (resuming)" if resume else ""))
    base_dir = resolve_base(cfg.model.name, rep)
    text = is_pipeline(base_dir)
    if text:
        parts = load_pipeline(base_dir)
        unet, noise_scheduler = parts.unet, parts.scheduler
        base_meta = ImageMeta([], 0, parts.resolution, 3, {"pipeline": str(base_dir)}, "text")
        _adopt(cfg, base_meta)
        rep.info(f"text-conditioned pipeline {base_dir} ({parts.resolution}x{parts.resolution})")
    else:
        unet, noise_scheduler, base_meta = load_base(base_dir)
        _adopt(cfg, base_meta)
        rep.info(f"image base {base_dir} ({len(base_meta.classes)} of {base_meta.slots} class slots taken)")

    if dist.main and not resume:  # after the base: the resolution and channels it draws are part of the config
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))
    if resume:
        train_files, eval_files = resume_files(run_dir)
    else:
        train_files, eval_files = _data_files(cfg, run_dir, dist)
    audit_dir = run_dir / "audit" if dist.main else Path(tempfile.mkdtemp(prefix="tunelab-audit-"))
    audit = run_image_audit(
        train_files, eval_files, audit_dir, cfg.policy, resolution=cfg.image.resolution, channels=cfg.image.channels
    )
    a = audit.report
    rep.info(
        f"audit: {a['train_images']} training and {a['eval_images']} eval images kept, {a['quarantined']} "
        f"quarantined, {a['duplicates']['exact']} exact and {a['duplicates']['near']} near duplicates removed, "
        f"{a['removed_from_eval']} eval images overlapping training removed; verdict {a['verdict']}"
    )
    forced = audit_gate(a, opts.force, run_dir, rep)
    if resume:
        check_inputs_unchanged(run_dir, audit.files)
    elif dist.main:
        atomic_write_json(run_dir / "train" / "inputs.json", {str(p): sha256_file(p) for p in audit.files})

    new: list[str] = []
    train_pix = stack(audit.train)
    if text:
        meta = ImageMeta(
            sorted({it.label for it in audit.train}), 0, base_meta.resolution, 3, base_meta.made_by, "text"
        )
        with rep.status("encoding the images to latents and the captions to hidden states, once"):
            images = encode_images(parts, to_tensor(train_pix))
            cond = encode_text(parts, [it.label for it in audit.train])
        cond_key = "encoder_hidden_states"
    else:
        meta = base_meta.with_classes([it.label for it in audit.train])
        images = to_tensor(train_pix)
        cond = torch.tensor([meta.classes.index(it.label) for it in audit.train])
        cond_key = "class_labels"
        new = [c for c in meta.classes if c not in base_meta.classes]
        if new:
            rep.info(f"new classes (free slots): {', '.join(new)}")
        kept = [c for c in base_meta.classes if c not in new and c not in {it.label for it in audit.train}]
        if cfg.image.prior_images and kept:
            with rep.status("sampling the base model's own classes for prior preservation"):
                prior = prior_samples(
                    unet,
                    noise_scheduler.config,
                    base_meta,
                    kept,
                    cfg.image.prior_images,
                    cfg.image.sample_steps,
                    cfg.train.seed,
                )
            images = torch.cat([images, prior])
            more = torch.tensor([meta.classes.index(c) for c in kept for _ in range(cfg.image.prior_images)])
            cond = torch.cat([cond, more])
            rep.info(f"prior preservation: {len(prior)} base samples of {', '.join(kept)} trained on beside the data")
    model = prepare(unet, cfg)
    res = train_unet(
        model,
        noise_scheduler,
        images,
        cond,
        meta,
        cfg,
        rep,
        run_dir=run_dir,
        resume=resume,
        dist=dist,
        cond_key=cond_key,
    )
    if not dist.main:
        return {}
    save_adapter(res.model, meta, run_dir / "model")

    rep.stage("evaluate")
    targets = sorted({it.label for it in audit.train})
    ref_pix, ref_labels = list(train_pix), [it.label for it in audit.train]
    if audit.eval:
        ref_pix += list(stack(audit.eval))
        ref_labels += [it.label for it in audit.eval]
    others: list[str] = []
    if base_dir.name == DEFAULT_IMAGE_MODEL:  # the default base's own classes have real images: the digits
        pix, labels, _ = digits(cfg.image.resolution)
        others = [c for c in BASE_CLASSES if c not in targets]
        keep = [i for i, y in enumerate(labels) if y in others]
        ref_pix += list(pix[keep])
        ref_labels += [labels[i] for i in keep]
    judge = None
    if not text or class_like(ref_labels):
        with rep.status("training the judge (once per set of real images)"):
            judge = train_judge(np.stack(ref_pix), ref_labels, seed=cfg.eval.seed)
        rep.info(
            f"judge: {len(judge.classes)} classes, {judge.held_out_accuracy:.3f} accuracy on "
            f"{judge.held_out} held-out real images"
        )
    else:
        rep.info("the captions are not classes (each needs 2+ images, 50 at most): no judge; memorisation only")
    size = (meta.channels, meta.resolution, meta.resolution)
    if text:
        base_model = load_part(base_dir, "unet")  # the training loop adapted `unet` in place

        def draw(model: Any, labels: list[str], seeds: list[int]) -> Any:
            return sample_text(parts, model, labels, seeds, steps=cfg.image.sample_steps)
    else:
        base_model = load_base(base_dir)[0]

        def draw(model: Any, labels: list[str], seeds: list[int]) -> Any:
            slots = [meta.classes.index(c) for c in labels]
            return sample(model, noise_scheduler.config, slots, seeds, steps=cfg.image.sample_steps, size=size)

    real = audit.eval
    inputs = EvalInputs(targets, others, stack(real) if real else np.zeros((0, 1, 1, 1), np.uint8), train_pix)
    with rep.status("sampling base and tuned models, paired by seed"):
        metrics = evaluate_pair(
            base_model,
            res.model,
            draw,
            judge,
            inputs,
            run_dir / "eval",
            seeds=cfg.image.eval_seeds,
            steps=cfg.image.sample_steps,
            resamples=min(2000, cfg.eval.bootstrap_resamples),
        )
    ca = metrics["class_accuracy"]
    summary: dict[str, Any] = {
        "task": "image",
        "method": cfg.method.kind,
        "steps": cfg.train.max_steps,
        "global_batch": cfg.batch.size * cfg.batch.grad_accum,
        "processes": dist.world,
        "examples": len(audit.train),
        "prior_images": len(images) - len(audit.train),
        "classes": targets,
        "new_classes": new,
        "final_loss": res.curve[-1]["loss"],
        "train_s": res.train_s,
        "images_per_s": res.images_per_s,
        "peak_rss_gb": res.peak_rss_gb,
        "precision": res.precision,
        "trainable_params": res.trainable_params,
        "total_params": res.total_params,
        "resumed_from_step": res.resumed_from,
        "skipped_checkpoints": res.skipped_checkpoints,
        "audit_verdict": a["verdict"],
        "forced": forced,
        "base_model": str(base_dir),
        "base_weights_sha256": dir_digest(base_dir / "unet"),
        "base_class_accuracy": ca["base"] if ca else None,
        "tuned_class_accuracy": ca["tuned"] if ca else None,
        "class_accuracy_p": ca["p_value"] if ca else None,
        "kid": metrics["kid"],
        "run_dir": str(run_dir),
    }
    atomic_write_text(run_dir / "model" / "README.md", _card(base_dir, meta.to_json(), summary, metrics, a))
    write_manifest(
        run_dir,
        inputs={
            "data": audit.files,
            "base_model": sorted(p for p in base_dir.rglob("*") if p.is_file()),
            "config": [run_dir / "config.yaml"],
        },
        outputs=[run_dir / "model", run_dir / "train", run_dir / "audit", run_dir / "eval"],
        extra={
            "modality": "image",
            "base_model_source": {
                "path": str(base_dir),
                "weights_sha256": summary["base_weights_sha256"],
                "made_by": base_meta.made_by,
            },
            "audit": {"verdict": a["verdict"], "forced": forced, "reasons": a.get("reasons", [])},
            "resumed_from_step": res.resumed_from,
            "judge": metrics["judge"],
        },
    )
    summary["total_s"] = time.perf_counter() - t0
    report = write_image_report(run_dir, summary)
    record_report(run_dir, report)
    atomic_write_json(run_dir / "summary.json", summary)  # last: its presence marks the run complete
    rep.event("done", summary=summary)
    return summary


def prior_samples(
    unet: Any, scheduler_config: Any, meta: Any, classes: list[str], per_class: int, steps: int, seed: int
) -> Any:
    """The base model's own samples of `classes` (seeds apart from evaluation's), to train on beside the data."""
    slots = [meta.classes.index(c) for c in classes for _ in range(per_class)]
    seeds = [1_000_000 + seed * 100_000 + i for i in range(len(slots))]
    size = (meta.channels, meta.resolution, meta.resolution)
    return sample(unet, scheduler_config, slots, seeds, steps=steps, size=size)


def _adopt(cfg: RunConfig, meta: ImageMeta) -> None:
    """The base's resolution and channels, unless the config set others itself (then it is an error)."""
    for name in ("resolution", "channels"):
        want, have = getattr(cfg.image, name), getattr(meta, name)
        if want != have:
            if name in cfg.image.model_fields_set:
                raise ConfigError(
                    f"the base model draws {meta.resolution}x{meta.resolution} images with "
                    f"{meta.channels} channel(s); the config says {want}",
                    field=f"image.{name}",
                )
            setattr(cfg.image, name, have)


def _card(base_dir: Path, meta: dict[str, Any], s: dict[str, Any], m: dict[str, Any], a: dict[str, Any]) -> str:
    ca = m["class_accuracy"]
    ids = sorted({str(x["id"]) for x in a["licence"]})
    lic = ", ".join(ids) or "unknown"
    kid = m.get("kid")
    kind = "text-conditioned" if meta.get("conditioning") == "text" else "class-conditioned"
    lines = [
        "---",
        "library_name: peft" if s["method"] == "lora" else "library_name: diffusers",
        f"license: {ids[0].lower() if len(ids) == 1 and ids[0] != 'unknown' else 'other'}",
        f"tags: [tunelab, diffusion, {s['method']}, {kind}]",
        f"base_model: {base_dir}",
        "---",
        "# Image model made by tunelab",
        "",
        f"A {s['method']} fine-tune of the {kind} UNet in `{base_dir}` on {s['examples']} images of "
        f"{', '.join(s['classes'])} (data licence: {lic}). New classes: {', '.join(s['new_classes']) or 'none'}.",
        "",
        "## Measured (paired: the same class and seed for base and tuned)",
    ]
    if ca:
        lines += [
            f"- class accuracy of samples as the judge reads them: {ca['base']:.3f} -> {ca['tuned']:.3f} "
            f"(95% CI of the change {ca['ci95'][0]:+.3f} to {ca['ci95'][1]:+.3f}, McNemar p = {ca['p_value']:.2g})",
            f"- judge: {m['judge']['held_out_accuracy']:.3f} accuracy on {m['judge']['held_out_images']} "
            "held-out real images",
        ]
    else:
        lines.append("- no judge: the captions are not classes, so only memorisation was measured")
    if kid:
        lines.append(
            f"- KID against {kid['real_images']} real eval images: {kid['base']:.4f} -> {kid['tuned']:.4f} "
            f"(change {kid['delta']:+.4f}, 95% CI {kid['delta_ci95'][0]:+.4f} to {kid['delta_ci95'][1]:+.4f})"
        )
    mem = m["memorisation"]
    lines.append(f"- near-copies of training images: {mem['tuned_copies']} of {mem['of']} tuned samples")
    if m.get("other_class_accuracy"):
        o = m["other_class_accuracy"]
        lines.append(
            f"- the base's other classes ({', '.join(m['other_classes'])}): {o['base']:.3f} -> {o['tuned']:.3f}"
        )
    lines += ["", "## Provenance", f"- base weights sha256: {s['base_weights_sha256']}"]
    lines += [f"- {f['role']} data {f['path']}: sha256 {f['sha256']}" for f in a["files"]]
    lines += ["", "## Class slots", ", ".join(f"{i}={c}" for i, c in enumerate(meta["classes"])), ""]
    return "\n".join(lines) + "\n"
