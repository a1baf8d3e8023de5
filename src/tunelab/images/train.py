"""The image training loop: the text engine's recipe (seeded step plan, AdamW, warm-up + schedule, atomic hashed
checkpoints, exact resume, DDP under torchrun) applied to a diffusion UNet's noise-prediction loss.

Exact resume holds because nothing in a step depends on history the checkpoint does not hold: the step's images
come from `StepPlan` (a function of the step), its noise and timesteps from a generator seeded by (seed, step,
rank), and the weights, optimizer, LR schedule and RNGs are restored from the checkpoint.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig
from tunelab.errors import ConfigError, DataError
from tunelab.images.diffusion import noise_loss, step_generator
from tunelab.images.fused import merged_lora
from tunelab.images.unet import ImageMeta, add_lora, write_meta
from tunelab.progress import Reporter
from tunelab.train.distributed import Dist
from tunelab.train.engine import (
    StepPlan,
    begin,
    default_threads,
    frozen_in_bf16,
    lr_factor,
    peak_rss_gb,
    record_step,
    save_checkpoint,
    seed_everything,
    uses_bf16,
)


@dataclass
class ImageTrainResult:
    model: Any
    trainable_params: int
    total_params: int
    precision: str
    curve: list[dict[str, Any]] = field(default_factory=list)
    images_seen: int = 0
    train_s: float = 0.0
    resumed_from: int | None = None
    skipped_checkpoints: list[str] = field(default_factory=list)
    peak_rss_gb: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images_seen / self.train_s if self.train_s else 0.0


def prepare(unet: Any, cfg: RunConfig) -> Any:
    """LoRA (the default) or every weight trainable; seeded first, so every process starts from the same adapter."""
    seed_everything(cfg.train.seed)
    if cfg.method.kind == "lora":
        return add_lora(
            unet,
            cfg.method.r,
            cfg.method.alpha,
            cfg.method.dropout,
            list(cfg.image.target_modules),
            class_embedding=getattr(unet, "class_embedding", None) is not None,
        )
    return unet.requires_grad_(True)


def save_adapter(model: Any, meta: ImageMeta, out: Path) -> None:
    """A PEFT adapter directory (or the full UNet) plus the class slots it was trained with."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        model.save_pretrained(str(out / "unet"), safe_serialization=True)
    write_meta(out, meta)


def train_unet(
    model: Any,
    noise_scheduler: Any,
    images: Any,
    cond: Any,
    meta: ImageMeta,
    cfg: RunConfig,
    reporter: Reporter,
    *,
    run_dir: Path | None = None,
    resume: bool = False,
    dist: Dist | None = None,
    cond_key: str = "class_labels",
) -> ImageTrainResult:
    """Train `model` (already prepared) on `images` (N, C, H, W: pixels in [-1, 1], or latents) conditioned on
    `cond` (N, ...): class ids, or text hidden states with `cond_key="encoder_hidden_states"`."""
    import torch

    dist = dist or Dist()
    n = int(images.shape[0])
    if n == 0:
        raise DataError("no training images", field="train")
    per_step = cfg.batch.size * cfg.batch.grad_accum
    if per_step < dist.world:
        raise ConfigError(f"global batch {per_step} is smaller than {dist.world} processes", field="batch.size")
    torch.set_num_threads(cfg.train.threads or default_threads(dist.local_world))
    device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    model = model.to(device)
    images, cond = images.to(device), cond.to(device)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    oc = cfg.optimizer
    fused = device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(
        params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay, **({"fused": True} if fused else {})
    )
    steps = cfg.train.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, cfg.schedule.warmup_steps, cfg.schedule.kind)
    )
    # "auto" is bf16 on a GPU only: on a CPU a small UNet's step took as long in bf16 as in fp32 (even with AMX;
    # its convolutions are too small to gain), so fp32's exactness costs nothing there
    use_bf16 = cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and device.type == "cuda" and uses_bf16("auto", device)
    )
    result = ImageTrainResult(
        model=model,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in model.parameters()),
        precision=("bf16 autocast, frozen weights in bf16" if cfg.method.kind == "lora" else "bf16 autocast")
        if use_bf16
        else "fp32",
    )
    plan = StepPlan(n, per_step, cfg.train.seed)
    ckpt_root = run_dir / "checkpoints" if run_dir else None
    curve_path = run_dir / "train" / "curve.jsonl" if run_dir else None
    start = 0
    state = begin(run_dir, resume, dist, reporter, named, opt, sched, result.skipped_checkpoints, steps)
    if state is not None:
        start = result.resumed_from = state["step"]
        result.curve, result.images_seen, result.train_s = state["curve"], state["images_seen"], state["train_s"]

    runner: Any = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    reporter.event(
        "train_start",
        modality="image",
        examples=n,
        steps=steps,
        start_step=start,
        method=cfg.method.kind,
        processes=dist.world,
        precision=result.precision,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
    )

    def write_checkpoint(step: int) -> None:
        counters = {"images_seen": result.images_seen, "train_s": result.train_s, "curve": result.curve}
        save_checkpoint(
            ckpt_root,
            step,
            dist,
            reporter,
            named,
            opt,
            sched,
            counters,
            cfg.checkpoint.keep_last,
            lambda d: save_adapter(model, meta, d),
        )  # each checkpoint can be sampled from

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    model.train()
    curve_f = open(curve_path, "a", encoding="utf-8") if (curve_path and dist.main) else None  # noqa: SIM115
    t_resume = time.perf_counter()
    base_s = result.train_s
    try:
        with ExitStack() as stack:
            if use_bf16 and hasattr(model, "peft_config"):  # the frozen UNet held in bf16 (half the memory)
                stack.enter_context(frozen_in_bf16(model))
            if cfg.train.fused_lora and hasattr(model, "peft_config"):
                stack.enter_context(merged_lora(model))
            update = stack.enter_context(reporter.progress("train", steps))
            update(advance=start)
            for step in range(start, steps):
                chosen = plan.indices(step)
                mine = chosen[dist.rank :: dist.world]
                gen = step_generator(cfg.train.seed, step, dist.rank)
                loss_sum = 0.0
                groups = [mine[i : i + cfg.batch.size] for i in range(0, len(mine), cfg.batch.size)]
                for j, group in enumerate(groups):
                    idx = torch.tensor(group, device=device)
                    sync = j == len(groups) - 1 or not dist.enabled
                    with nullcontext() if sync else runner.no_sync(), autocast:
                        loss = noise_loss(runner, noise_scheduler, images[idx], {cond_key: cond[idx]}, gen)
                    # the mean over the global batch, whatever each process's share (DDP averages over processes)
                    (loss * (len(group) * dist.world / len(chosen))).backward()
                    loss_sum += float(loss.detach()) * len(group)
                loss_sum = dist.all_sum(loss_sum)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, oc.grad_clip))
                lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                result.images_seen += len(chosen)
                result.train_s = base_s + time.perf_counter() - t_resume
                row = {
                    "step": step + 1,
                    "loss": loss_sum / len(chosen),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "images": result.images_seen,
                    "elapsed_s": round(result.train_s, 3),
                }
                record_step(row, result.curve, curve_f, reporter)
                update(loss=row["loss"], lr=lr, img_s=round(result.images_per_s, 1))
                if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < steps:
                    write_checkpoint(step + 1)
    finally:
        if curve_f:
            curve_f.close()
    model.eval()
    result.peak_rss_gb = peak_rss_gb()
    return result
