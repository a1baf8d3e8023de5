"""Image fixtures: a tiny random class-conditioned UNet base and real 8x8 digit PNGs (scikit-learn's, on disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunelab.fsutil import atomic_dir
from tunelab.images.base import raw_digits
from tunelab.images.data import png_bytes
from tunelab.images.unet import ImageMeta, new_unet, noise_schedule, save_base, small_unet_config


def build_tiny_base(path: Path, classes: list[str], slots: int = 4, seed: int = 0) -> Path:
    import torch

    torch.manual_seed(seed)
    unet = new_unet(small_unet_config(8, 1, slots, width=8))
    with atomic_dir(path) as tmp:
        save_base(unet, noise_schedule(), ImageMeta(list(classes), slots, 8, 1, {"by": "test"}), tmp)
    return path


def write_digits(root: Path, per_class: dict[str, int], start: int = 0) -> Path:
    """`root/<digit>/<n>.png`: `per_class[d]` real digit images of each digit d, from index `start` on."""
    raw, labels = raw_digits()
    for d, n in per_class.items():
        idx = [i for i, y in enumerate(labels) if y == d][start : start + n]
        (root / d).mkdir(parents=True, exist_ok=True)
        for i in idx:
            (root / d / f"{i:04d}.png").write_bytes(png_bytes(raw[i][:, :, None]))
    return root


def grey(value: int, size: int = 8) -> np.ndarray:
    return np.full((size, size, 1), value, dtype=np.uint8)


@pytest.fixture
def image_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private tunelab home: judges and models cached by a test stay in it."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUNELAB_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("imgbase") / "base", ["0", "1"])
