"""`tunelab bench image`: the default image fine-tune, measured for quality and against diffusers' own loop.

1. Quality: `tunelab train --preset image` (the default base, made from scikit-learn's digits 0-4, taught 5-9 from
   8 images each), read from its eval: class accuracy of base vs tuned samples on the classes the base never saw,
   KID base vs tuned with bootstrap CIs, the base's own classes after the fine-tune, near-copies.
2. Speed and memory: the same 40 training images, LoRA (same rank, targets and trainable class embedding), batch,
   steps, optimizer and schedule, trained in two fresh processes:
   - tunelab's image loop (`images.train.train_unet`);
   - diffusers' own LoRA training loop, as its example `train_text_to_image_lora.py` writes it, adapted to
     class labels: `load_dataset("imagefolder")` with per-sample transforms in a `DataLoader`, LoRA injected by
     `peft.inject_adapter_in_model` (what diffusers' `add_adapter` calls; UNet2DModel does not mix it in),
     `accelerate`'s `Accelerator.prepare`/`backward`/`clip_grad_norm_`, AdamW
     and `diffusers.optimization.get_scheduler`.
   Images/s is taken over the steps after the first 5 (warm-up); peak RSS is each process's own, and the part
   of it the training loop added (peak minus the RSS before the first step) is reported too.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json

TARGETS = {"tuned_class_accuracy_min": 0.8, "speed_ratio_min": 1.5, "memory_ratio_max": 0.5}
WARM = 5


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _rate(times: list[float], batch_sizes: list[int]) -> float:
    return sum(batch_sizes[WARM:]) / max(1e-9, sum(times[WARM:]))


def side_tunelab(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from tunelab.config import build_config
    from tunelab.images.data import read_image_set, stack, to_tensor
    from tunelab.images.train import prepare, train_unet
    from tunelab.images.unet import load_base
    from tunelab.progress import Reporter

    unet, sched, meta = load_base(Path(spec["base"]))
    items = read_image_set(Path(spec["folder"]), meta.resolution, meta.channels).items
    meta = meta.with_classes([it.label for it in items])
    images = to_tensor(stack(items))
    ids = torch.tensor([meta.classes.index(it.label) for it in items])
    cfg = build_config(
        {
            "task": "image",
            "method": {"r": spec["r"], "alpha": spec["r"]},
            "optimizer": {"lr": spec["lr"]},
            "schedule": {"warmup_steps": spec["warmup"]},
            "batch": {"size": spec["batch"]},
            "train": {"max_steps": spec["steps"], "threads": spec["threads"]},
        }
    )
    model = prepare(unet, cfg)
    before = _current_rss_gb()
    run_dir = Path(spec["out"]) / "tunelab-run"  # as the product runs: curve, events and progress written
    run_dir.mkdir(parents=True, exist_ok=True)
    rep = Reporter(events=run_dir / "events.jsonl", quiet=True)
    res = train_unet(model, sched, images, ids, meta, cfg, rep, run_dir=run_dir)
    rep.close()
    elapsed = [0.0] + [r["elapsed_s"] for r in res.curve]
    times = [b - a for a, b in itertools.pairwise(elapsed)]
    return {
        "images_per_s": _rate(times, [spec["batch"]] * len(times)),
        "rss_before_loop_gb": before,
        "final_loss": res.curve[-1]["loss"],
        "precision": res.precision,
        "trainable_params": res.trainable_params,
    }


def side_diffusers(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from datasets import load_dataset
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig, inject_adapter_in_model
    from PIL import Image

    from tunelab.images.unet import DEFAULT_TARGETS, read_meta

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    base = Path(spec["base"])
    meta = read_meta(base)
    accelerator = Accelerator(gradient_accumulation_steps=1, mixed_precision="no")
    noise_scheduler = DDPMScheduler.from_pretrained(str(base / "scheduler"))
    unet = UNet2DModel.from_pretrained(str(base / "unet"))
    unet.requires_grad_(False)
    lora = LoraConfig(
        r=spec["r"], lora_alpha=spec["r"], init_lora_weights="gaussian", target_modules=list(DEFAULT_TARGETS)
    )
    # what `unet.add_adapter(lora)` does in diffusers' PEFT integration (UNet2DModel does not mix it in)
    unet = inject_adapter_in_model(lora, unet)
    unet.class_embedding.requires_grad_(True)  # the new classes' slots train, as on tunelab's side
    params = [p for p in unet.parameters() if p.requires_grad]
    dataset = load_dataset("imagefolder", data_dir=spec["folder"], cache_dir=spec["cache"])["train"]
    names = dataset.features["label"].names
    slots = meta.with_classes(names)
    res = meta.resolution

    def preprocess(examples: dict[str, Any]) -> dict[str, Any]:  # Resize, CenterCrop, ToTensor, Normalize(0.5)
        out = []
        for im in examples["image"]:
            im = im.convert("L" if meta.channels == 1 else "RGB").resize((res, res), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
            arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            out.append(torch.from_numpy((arr - 0.5) / 0.5))
        examples["pixel_values"] = out
        return examples

    train_dataset = dataset.with_transform(preprocess)

    def collate_fn(examples: list[dict[str, Any]]) -> dict[str, Any]:
        pixel_values = torch.stack([e["pixel_values"] for e in examples]).contiguous().float()
        labels = torch.tensor([slots.classes.index(names[e["label"]]) for e in examples])
        return {"pixel_values": pixel_values, "labels": labels}

    loader = torch.utils.data.DataLoader(
        train_dataset, shuffle=True, collate_fn=collate_fn, batch_size=spec["batch"], num_workers=0
    )
    optimizer = torch.optim.AdamW(params, lr=spec["lr"], betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler(
        "cosine", optimizer=optimizer, num_warmup_steps=spec["warmup"], num_training_steps=spec["steps"]
    )
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    unet.train()
    before = _current_rss_gb()
    times: list[float] = []
    sizes: list[int] = []
    step = 0
    loss = torch.tensor(0.0)
    while step < spec["steps"]:
        t0 = time.perf_counter()
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = batch["pixel_values"]
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,)).long()
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                model_pred = unet(noisy, timesteps, class_labels=batch["labels"]).sample
                loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            times.append(time.perf_counter() - t0)
            sizes.append(bsz)
            step += 1
            t0 = time.perf_counter()
            if step >= spec["steps"]:
                break
    return {
        "images_per_s": _rate(times, sizes),
        "rss_before_loop_gb": before,
        "final_loss": float(loss),
        "precision": "fp32",
        "trainable_params": sum(p.numel() for p in params),
    }


def _side_main(side: str, spec_path: str, out: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    r = side_tunelab(spec) if side == "tunelab" else side_diffusers(spec)
    r["peak_rss_gb"] = _rss_gb()
    r["loop_rss_gb"] = r["peak_rss_gb"] - r["rss_before_loop_gb"]
    Path(out).write_text(json.dumps(r))


def _run_side(side: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    spec_path = out / f"spec-{side}.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tunelab.bench.image", side, str(spec_path), str(out / f"{side}.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads((out / f"{side}.json").read_text())
    return data


def speed_sides(base: Path, folder: Path, out: Path, steps: int, batch: int = 32, warmup: int = 20,
                log: Any = print) -> dict[str, dict[str, Any]]:  # fmt: skip
    """tunelab's loop and diffusers' on the same class folders, each in a fresh process: images/s and RSS."""
    out.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spec = {"out": str(out), "base": str(base), "folder": str(folder), "cache": str(out / "hf-cache"),
            "steps": steps, "batch": batch, "lr": 2e-3, "warmup": warmup, "r": 8, "threads": threads}  # fmt: skip
    sides = {}
    for side in ("tunelab", "diffusers"):
        log(f"speed: {side}, {steps} steps of {batch} images")
        sides[side] = _run_side(side, spec, out)
        log(f"  {sides[side]['images_per_s']:.0f} images/s, peak RSS {sides[side]['peak_rss_gb']:.2f} GB")
    return sides


def bench_image(out: Path, steps: int = 200, log: Any = print) -> dict[str, Any]:
    from tunelab.images.base import default_image_base
    from tunelab.images.data import read_image_set

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log("quality: tunelab train --preset image (the default base taught the digits 5-9)")
    run_dir = out / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab", "train", "--preset", "image", "--out", str(run_dir)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the image run failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    m = json.loads((run_dir / "eval" / "metrics.json").read_text())

    base = default_image_base()
    folder = out / "folder"  # the run's 40 training images as class folders, the layout imagefolder reads
    items = read_image_set(run_dir / "data" / "train.jsonl", 16, 1).items
    for it in items:
        (folder / it.label).mkdir(parents=True, exist_ok=True)
        (folder / it.label / Path(it.path).name).write_bytes(Path(it.path).read_bytes())
    sides = speed_sides(base, folder, out, steps, log=log)
    t, d = sides["tunelab"], sides["diffusers"]
    ca, kid = m["class_accuracy"], m["kid"]
    result: dict[str, Any] = {
        "bench": "image",
        "tuned_class_accuracy": ca["tuned"],
        "base_class_accuracy": ca["base"],
        "class_accuracy_delta_ci95": ca["ci95"],
        "class_accuracy_p": ca["p_value"],
        "per_class": m["per_class"],
        "samples_per_class": m["samples_per_class"],
        "judge_held_out_accuracy": m["judge"]["held_out_accuracy"],
        "kid": {k: kid[k] for k in ("base", "tuned", "delta", "base_ci95", "tuned_ci95", "delta_ci95")},
        "base_classes_after": m["other_class_accuracy"],
        "near_copies": {"tuned": m["memorisation"]["tuned_copies"], "of": m["memorisation"]["of"]},
        "run": {
            "steps": summary["steps"],
            "train_s": summary["train_s"],
            "total_s": summary["total_s"],
            "prior_images": summary["prior_images"],
            "run_dir": str(run_dir),
        },
        "speed_ratio": t["images_per_s"] / d["images_per_s"],
        "memory_ratio": t["peak_rss_gb"] / d["peak_rss_gb"],
        "loop_memory_ratio": t["loop_rss_gb"] / max(1e-9, d["loop_rss_gb"]),
        "sides": sides,
        "speed_steps": steps,
        "targets": TARGETS,
    }
    result["met"] = {
        "tuned_class_accuracy": ca["tuned"] >= TARGETS["tuned_class_accuracy_min"],
        "speed_ratio": result["speed_ratio"] >= TARGETS["speed_ratio_min"],
        "memory_ratio": result["memory_ratio"] <= TARGETS["memory_ratio_max"],
    }
    result["bench_s"] = time.perf_counter() - t0
    atomic_write_json(out / "bench-image.json", result)
    return result


if __name__ == "__main__":
    _side_main(*sys.argv[1:4])
