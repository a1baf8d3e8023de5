"""The offline judge of generated images: a small CNN trained once on real images, and KID on its features.

This follows FID/KID in spirit (a fixed network's features of generated vs real images) without an
Inception network, which cannot be downloaded here: the judge is trained on the task's own real images, so
its features are the ones that tell these classes apart. Its accuracy on held-out real images is reported beside
every score it gives; a judge that cannot tell real images apart cannot grade generated ones.

KID (Binkowski et al. 2018) is the unbiased squared MMD with the cubic polynomial kernel
k(x, y) = (x.y / d + 1)^3, here on features standardised by the real images' mean and spread (the judge's
features have no fixed scale, unlike Inception's). Its confidence interval is a bootstrap over generated
samples and real images with weights: self-pairs (an image with its own copy) are left out of the within-set
sums, so the resampled estimate stays a U-statistic. Base and tuned are resampled with the same weights,
which pairs them over seeds and classes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.fsutil import atomic_dir
from tunelab.paths import tunelab_home

JUDGE_VERSION = 1


def _net(channels: int, classes: int, resolution: int) -> Any:
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.SiLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.SiLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 64),
        nn.SiLU(),  # the 64 features KID is computed on
        nn.Linear(64, classes),
    )


@dataclass
class Judge:
    net: Any
    classes: list[str]
    held_out_accuracy: float
    held_out: int
    key: str

    def logits_and_features(self, x: Any) -> tuple[Any, Any]:
        import torch

        with torch.inference_mode():
            feats = self.net[:-1](x)
            return self.net[-1](feats), feats

    def predict(self, x: Any) -> tuple[list[str], np.ndarray]:
        """Predicted class names and the (N, 64) features of (N, C, H, W) images in [-1, 1]."""
        logits, feats = self.logits_and_features(x)
        return [self.classes[i] for i in logits.argmax(1).tolist()], feats.float().numpy()


def train_judge(
    pixels: np.ndarray, labels: list[str], *, seed: int = 0, epochs: int = 30, cache: Path | None = None
) -> Judge:
    """Train (or load from the cache, keyed by the images, labels and recipe) on real images; 20% held out."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    from tunelab.images.data import to_tensor

    classes = sorted(set(labels))
    h = hashlib.sha256(pixels.tobytes())
    h.update("\0".join(labels).encode())
    h.update(f"{seed}:{epochs}:{JUDGE_VERSION}".encode())
    key = h.hexdigest()[:16]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    n_test = max(1, len(labels) // 5)
    test, train = order[:n_test], order[n_test:]
    y = torch.tensor([classes.index(c) for c in labels])
    x = to_tensor(pixels)
    torch.manual_seed(seed)
    net = _net(pixels.shape[3], len(classes), pixels.shape[1])
    where = (cache or tunelab_home() / "judges") / key
    if (where / "judge.safetensors").is_file():
        net.load_state_dict(load_file(str(where / "judge.safetensors")))
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(epochs):
            perm = torch.tensor(train)[torch.randperm(len(train), generator=gen)]
            for i in range(0, len(perm), 64):
                b = perm[i : i + 64]
                xb = x[b] + 0.05 * torch.randn(x[b].shape, generator=gen)  # a little noise: samples are not clean
                loss = F.cross_entropy(net(xb), y[b])
                loss.backward()
                opt.step()
                opt.zero_grad()
        net.eval()
        with atomic_dir(where) as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "judge.safetensors"))
    net.eval()
    with torch.inference_mode():
        acc = float((net(x[test]).argmax(1) == y[test]).float().mean())
    return Judge(net, classes, acc, int(n_test), key)


def _poly(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a @ b.T / a.shape[1] + 1.0) ** 3)


def _mmd(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> float:
    """Weighted unbiased MMD^2: within-set sums skip i == j (and so an image paired with its own copies)."""
    sx, sy = wx.sum(), wy.sum()
    xx = (wx @ kxx @ wx - (wx * wx * np.diag(kxx)).sum()) / max(1e-12, sx * sx - (wx * wx).sum())
    yy = (wy @ kyy @ wy - (wy * wy * np.diag(kyy)).sum()) / max(1e-12, sy * sy - (wy * wy).sum())
    xy = (wx @ kxy @ wy) / (sx * sy)
    return float(xx + yy - 2 * xy)


def _standardise(real: np.ndarray, *sets: np.ndarray) -> list[np.ndarray]:
    """Features scaled by the real set's mean and spread: the kernel then has no units."""
    mu, sd = real.mean(0), real.std(0) + 1e-6
    return [(x - mu) / sd for x in sets]


def kid(fake: np.ndarray, real: np.ndarray) -> float:
    fake, real = _standardise(real, fake, real)
    return _mmd(_poly(fake, fake), _poly(real, real), _poly(fake, real), np.ones(len(fake)), np.ones(len(real)))


def paired_kid(
    base: np.ndarray, tuned: np.ndarray, real: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """KID of base and tuned samples (row i of each from the same class and seed) against real images,
    with 95% bootstrap intervals for each and for tuned - base, the same resampling weights for both."""
    base, tuned, real = _standardise(real, base, tuned, real)
    kb, kt, kr = _poly(base, base), _poly(tuned, tuned), _poly(real, real)
    kbr, ktr = _poly(base, real), _poly(tuned, real)
    ones_f, ones_r = np.ones(len(base)), np.ones(len(real))
    point_b, point_t = _mmd(kb, kr, kbr, ones_f, ones_r), _mmd(kt, kr, ktr, ones_f, ones_r)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        wf = np.bincount(rng.integers(0, len(base), len(base)), minlength=len(base)).astype(float)
        wr = np.bincount(rng.integers(0, len(real), len(real)), minlength=len(real)).astype(float)
        b, t = _mmd(kb, kr, kbr, wf, wr), _mmd(kt, kr, ktr, wf, wr)
        draws.append((b, t, t - b))
    arr = np.array(draws)
    lo, hi = np.percentile(arr, [2.5, 97.5], axis=0)
    return {
        "base": point_b,
        "tuned": point_t,
        "delta": point_t - point_b,
        "base_ci95": [float(lo[0]), float(hi[0])],
        "tuned_ci95": [float(lo[1]), float(hi[1])],
        "delta_ci95": [float(lo[2]), float(hi[2])],
        "resamples": resamples,
        "p_tuned_not_better": float((arr[:, 2] >= 0).mean()),  # share of resamples where tuned is not closer
    }
