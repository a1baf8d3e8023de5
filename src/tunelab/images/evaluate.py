"""Base vs tuned image generation, paired: the same (class, seed) start noise for both models.

Measured, per class and overall:
- class accuracy of samples as the judge reads them, McNemar exact p and a paired bootstrap CI of the change;
- KID of the samples against real eval images, with paired bootstrap CIs (`judge.paired_kid`);
- on the base model's own classes that the training data did not name: the same accuracy, to show what the
  fine-tune made worse (a LoRA moves every class, not only the trained ones);
- memorisation: each tuned sample's distance to its nearest training image. A sample is flagged as a copy when it
  is closer than `copy_quantile` of the real eval images are to their nearest training image, that is, closer
  than almost any genuinely different real image of the same set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.evaluate.stats import compare_binary
from tunelab.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_jsonl
from tunelab.images.data import png_bytes, to_tensor, to_uint8
from tunelab.images.judge import Judge, paired_kid

COPY_QUANTILE = 0.05


@dataclass
class EvalInputs:
    target_classes: list[str]  # the classes the training data named
    other_classes: list[str]  # base classes the training data did not name, with real images for the judge
    real_eval: np.ndarray  # (N, H, W, C) uint8, real images of the target classes
    train: np.ndarray  # the training images, for the memorisation check


def _nn_dist(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Root-mean-square pixel distance ([0, 1] scale) from each row of x to its nearest row of ref."""
    a = x.reshape(len(x), -1).astype(np.float32) / 255.0
    b = ref.reshape(len(ref), -1).astype(np.float32) / 255.0
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.asarray(np.sqrt(np.maximum(d2, 0).min(1) / a.shape[1]))


Draw = Callable[[Any, list[str], list[int]], Any]  # (model, class or caption per image, seed per image) -> images


def evaluate_pair(
    base: Any,
    tuned: Any,
    draw: Draw,
    judge: Judge | None,
    inputs: EvalInputs,
    out_dir: Path,
    *,
    seeds: int,
    steps: int,
    resamples: int = 1000,
) -> dict[str, Any]:
    """Sample both models, judge, compare; writes eval/{predictions.jsonl, metrics.json, grid.png}. Without a
    judge (captions that are not classes) only the memorisation check is measured."""
    classes = inputs.target_classes + inputs.other_classes
    wanted = [(c, s) for c in classes for s in range(seeds)]
    seed_ids = [10_000 + s for _, s in wanted]  # seeds apart from training's, the same for both models
    labels = [c for c, _ in wanted]
    xb = draw(base, labels, seed_ids)
    xt = draw(tuned, labels, seed_ids)
    if judge is not None:
        pb, fb = judge.predict(xb)
        pt, ft = judge.predict(xt)
    else:
        pb = pt = [""] * len(wanted)
    ub, ut = to_uint8(xb), to_uint8(xt)
    nn_t = _nn_dist(ut, inputs.train)
    nn_b = _nn_dist(ub, inputs.train)
    nn_real = _nn_dist(inputs.real_eval, inputs.train) if len(inputs.real_eval) else np.array([])
    copy_at = float(np.quantile(nn_real, COPY_QUANTILE)) if len(nn_real) else None

    rows = []
    for i, (c, _) in enumerate(wanted):
        rows.append(
            {
                "class": c,
                "seed": seed_ids[i],
                "target": c in inputs.target_classes,
                "base_pred": pb[i],
                "tuned_pred": pt[i],
                "base_right": pb[i] == c,
                "tuned_right": pt[i] == c,
                "tuned_nn_train": round(float(nn_t[i]), 4),
                "base_nn_train": round(float(nn_b[i]), 4),
                "tuned_copy": bool(copy_at is not None and c in inputs.target_classes and nn_t[i] < copy_at),
            }
        )
    target = [r for r in rows if r["target"]]
    other = [r for r in rows if not r["target"]]

    def compare(sel: list[dict[str, Any]], name: str) -> dict[str, Any]:
        cmp = compare_binary(name, [r["base_right"] for r in sel], [r["tuned_right"] for r in sel], resamples=resamples)
        return {
            "base": cmp.a,
            "tuned": cmp.b,
            "delta": cmp.delta,
            "ci95": list(cmp.ci95),
            "p_value": cmp.p_value,
            "only_base": cmp.only_a,
            "only_tuned": cmp.only_b,
            "n": cmp.n,
        }

    per_class = {
        c: {
            "base": float(np.mean([r["base_right"] for r in rows if r["class"] == c])),
            "tuned": float(np.mean([r["tuned_right"] for r in rows if r["class"] == c])),
        }
        for c in classes
    }
    tmask = np.array([r["target"] for r in rows])
    metrics: dict[str, Any] = {
        "modality": "image",
        "samples_per_class": seeds,
        "sample_steps": steps,
        "judge": None
        if judge is None
        else {
            "classes": judge.classes,
            "held_out_accuracy": judge.held_out_accuracy,
            "held_out_images": judge.held_out,
            "key": judge.key,
        },
        "target_classes": inputs.target_classes,
        "class_accuracy": compare(target, "class_accuracy") if judge else None,
        "per_class": per_class if judge else None,
        "other_classes": inputs.other_classes,
        "other_class_accuracy": compare(other, "other_class_accuracy") if other and judge else None,
        "kid": None,
        "memorisation": {
            "nn_train_rms": {
                "tuned_median": float(np.median(nn_t[tmask])),
                "base_median": float(np.median(nn_b[tmask])),
                "real_eval_median": float(np.median(nn_real)) if len(nn_real) else None,
            },
            "copy_threshold": copy_at,
            "copy_quantile": COPY_QUANTILE,
            "tuned_copies": sum(1 for r in target if r["tuned_copy"]),
            "of": len(target),
        },
    }
    if judge is not None and len(inputs.real_eval) >= 2:
        real = to_tensor(inputs.real_eval)
        _, fr = judge.predict(real)
        metrics["kid"] = paired_kid(fb[tmask], ft[tmask], fr, resamples=resamples)
        metrics["kid"]["real_images"] = len(inputs.real_eval)
        metrics["kid"]["features"] = f"the judge's {fr.shape[1]} penultimate features"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(out_dir / "predictions.jsonl", rows)
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_bytes(out_dir / "grid.png", png_bytes(grid(ub, ut, [c for c, _ in wanted], classes, min(seeds, 8))))
    return metrics


def grid(base: np.ndarray, tuned: np.ndarray, labels: list[str], classes: list[str], per_row: int) -> np.ndarray:
    """One row per class: `per_row` base samples, a gap, the same seeds from the tuned model. Upscaled 4x."""
    h, w, c = base.shape[1:]
    pad = 2
    cols = 2 * per_row + 1
    out = np.full(((h + pad) * len(classes) + pad, (w + pad) * cols + pad, c), 255, dtype=np.uint8)
    for r, cls in enumerate(classes):
        idx = [i for i, lab in enumerate(labels) if lab == cls][:per_row]
        for k, i in enumerate(idx):
            for side, imgs in ((0, base), (per_row + 1, tuned)):
                y, x = pad + r * (h + pad), pad + (side + k) * (w + pad)
                out[y : y + h, x : x + w] = imgs[i]
    scale = max(1, 128 // max(h, 1))
    return np.repeat(np.repeat(out, scale, axis=0), scale, axis=1)
