"""The default image base model and task, made here from a public image set that ships in an installed package.

No pre-trained diffusion weights ship on a package index, so tunelab makes its own base: scikit-learn's
handwritten digits (1,797 8x8 grey images from the UCI "Optical Recognition of Handwritten Digits" set,
CC BY 4.0), upscaled to 16x16 by the same normalisation as user images. A small class-conditioned UNet
(`unet.small_unet_config`, 16 class slots) is trained from scratch by tunelab's own image training loop on the
digits **0-4 only**, full fine-tuning, fixed seed, fp32. Slots 5-15 are left untrained.

The default fine-tuning task (`digits-5to9`) teaches that base the digits **5-9**, which it never saw, from 8
images of each (40 in all); the other images of 5-9 are the evaluation's real reference set.

The base is built once into `<tunelab home>/models/digits-unet-v1` (about 4 minutes on 2 cores), under a lock so
that concurrent processes build it once, and atomically so that a killed build leaves nothing half-written.
"""

from __future__ import annotations

import fcntl
import random
from pathlib import Path

import numpy as np

from tunelab.config import build_config
from tunelab.fsutil import atomic_dir, atomic_write_jsonl, atomic_write_text, sha256_bytes
from tunelab.images.data import normalise, png_bytes, to_tensor
from tunelab.images.unet import ImageMeta, new_unet, noise_schedule, save_base, small_unet_config
from tunelab.paths import tunelab_home
from tunelab.progress import Reporter

DEFAULT_IMAGE_MODEL = "digits-unet-v1"
BASE_CLASSES = [str(d) for d in range(5)]
NEW_CLASSES = [str(d) for d in range(5, 10)]
SLOTS = 16
RESOLUTION = 16
PRETRAIN_STEPS = 1500
PRETRAIN = {"batch": 64, "lr": 2e-3, "warmup": 50, "seed": 0}
DIGITS_LICENCE = {"id": "CC-BY-4.0", "name": "Creative Commons Attribution 4.0"}
DIGITS_SOURCE = (
    "scikit-learn's load_digits(): the UCI ML hand-written digits test set (E. Alpaydin, C. Kaynak, 1998), "
    "https://archive.ics.uci.edu/dataset/80"
)


def raw_digits() -> tuple[np.ndarray, list[str]]:
    """scikit-learn's digits as (N, 8, 8) uint8 (0..16 scaled to 0..255) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.clip(d.images * 16, 0, 255).astype(np.uint8), [str(t) for t in d.target]


def digits(resolution: int = RESOLUTION) -> tuple[np.ndarray, list[str], str]:
    """(N, H, W, 1) uint8 at `resolution` (normalised as a user's PNG would be), labels, sha256 of the raw set."""
    raw, labels = raw_digits()
    pixels = np.stack([normalise(png_bytes(a[:, :, None]), resolution, 1)[0] for a in raw])
    return pixels, labels, sha256_bytes(raw.tobytes())


def default_image_base(reporter: Reporter | None = None) -> Path:
    out = tunelab_home() / "models" / DEFAULT_IMAGE_MODEL
    if (out / "tunelab_image.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{DEFAULT_IMAGE_MODEL}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the model built
        if not (out / "tunelab_image.json").is_file():
            build_digits_base(out, reporter=reporter)
    return out


def build_digits_base(
    out: Path, steps: int | None = None, reporter: Reporter | None = None, width: int = 32
) -> Path:
    """Train the base UNet on digits 0-4 with tunelab's image loop (PRETRAIN_STEPS steps unless told);
    written atomically to `out`."""
    import torch

    from tunelab.images.train import train_unet

    steps = steps or PRETRAIN_STEPS

    rep = reporter or Reporter(quiet=True)
    pixels, labels, data_sha = digits()
    keep = [i for i, y in enumerate(labels) if y in BASE_CLASSES]
    meta = ImageMeta(list(BASE_CLASSES), SLOTS, RESOLUTION, 1)
    cfg = build_config(
        {
            "task": "image",
            "method": {"kind": "full"},
            "optimizer": {"lr": PRETRAIN["lr"]},
            "schedule": {"warmup_steps": min(PRETRAIN["warmup"], steps // 4)},
            "batch": {"size": PRETRAIN["batch"]},
            "train": {"max_steps": steps, "seed": PRETRAIN["seed"], "precision": "fp32"},
        }
    )
    torch.manual_seed(PRETRAIN["seed"])
    unet = new_unet(small_unet_config(RESOLUTION, 1, SLOTS, width)).requires_grad_(True)
    images = to_tensor(pixels[keep])
    ids = torch.tensor([meta.classes.index(labels[i]) for i in keep])
    rep.info(f"building the default image base: {len(keep)} digit images (0-4), {steps} steps, once")
    res = train_unet(unet, noise_schedule(), images, ids, meta, cfg, rep)
    meta.made_by = {
        "by": "tunelab images.base.build_digits_base",
        "data": f"scikit-learn digits, classes {', '.join(BASE_CLASSES)}: {len(keep)} images at 16x16",
        "data_source": DIGITS_SOURCE,
        "data_licence": DIGITS_LICENCE["id"],
        "data_sha256": data_sha,
        "steps": steps,
        "batch": PRETRAIN["batch"],
        "lr": PRETRAIN["lr"],
        "seed": PRETRAIN["seed"],
        "method": "full training from a random initialisation, fp32",
        "final_loss": res.curve[-1]["loss"],
        "untrained_slots": f"{len(BASE_CLASSES)}-{SLOTS - 1}",
    }
    with atomic_dir(out) as tmp:
        save_base(res.model, noise_schedule(), meta, tmp)
        atomic_write_text(tmp / "README.md", _card(meta))
    return out


def write_digits_task(data_dir: Path, per_class: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """The default fine-tuning task as files a user could have written: PNGs, train.jsonl and eval.jsonl.

    Train: `per_class` images of each digit 5-9 (seeded choice); eval: every other image of 5-9.
    Each JSONL gets a datacard with the set's licence and source.
    """
    raw, targets = raw_digits()
    rng = random.Random(seed)
    train_rows: list[dict[str, str]] = []
    eval_rows: list[dict[str, str]] = []
    img_dir = data_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for cls in NEW_CLASSES:
        idx = [i for i, t in enumerate(targets) if t == cls]
        chosen = set(rng.sample(idx, per_class))
        for i in idx:
            name = f"images/digit{cls}-{i:04d}.png"
            (data_dir / name).write_bytes(png_bytes(raw[i][:, :, None]))
            (train_rows if i in chosen else eval_rows).append({"image": name, "label": cls})
    card = (
        f"licence:\n  id: {DIGITS_LICENCE['id']}\n  name: {DIGITS_LICENCE['name']}\n"
        f'  commercial_use: true\nsource: "{DIGITS_SOURCE}"\n'
    )
    paths = []
    for name, rows in (("train.jsonl", train_rows), ("eval.jsonl", eval_rows)):
        atomic_write_jsonl(data_dir / name, rows)
        atomic_write_text(data_dir / f"{name}.datacard.yaml", card)
        paths.append(data_dir / name)
    return paths[0], paths[1]


def _card(meta: ImageMeta) -> str:
    lines = [
        "---",
        "license: cc-by-4.0",
        "library_name: diffusers",
        "tags: [tunelab, class-conditioned, ddpm]",
        "---",
        f"# {DEFAULT_IMAGE_MODEL}",
        "",
        "A small class-conditioned UNet made by tunelab as the default base for image fine-tuning.",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in meta.made_by.items()]
    lines += ["", f"Class slots: {', '.join(f'{i}={c}' for i, c in enumerate(meta.classes))}; the others are free."]
    return "\n".join(lines) + "\n"
