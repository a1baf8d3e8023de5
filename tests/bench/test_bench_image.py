"""`tunelab bench image`'s speed half: tunelab's loop and diffusers' own, for real, on the same folders."""

from __future__ import annotations

from pathlib import Path

from tests.images.conftest import build_tiny_base, write_digits
from tunelab.bench.image import WARM, speed_sides


def test_both_loops_train_the_same_adapter_on_the_same_images(tmp_path: Path) -> None:
    base = build_tiny_base(tmp_path / "base", ["0", "1"])
    folder = write_digits(tmp_path / "folder", {"5": 4, "6": 4})
    sides = speed_sides(base, folder, tmp_path / "out", steps=WARM + 3, batch=4, warmup=2, log=lambda _: None)
    t, d = sides["tunelab"], sides["diffusers"]
    # the same LoRA (rank, targets) and the same trainable class embedding on both sides
    assert t["trainable_params"] == d["trainable_params"] > 0
    for s in (t, d):
        assert s["images_per_s"] > 0 and s["precision"] == "fp32"
        assert s["peak_rss_gb"] >= s["rss_before_loop_gb"] > 0.1 and s["loop_rss_gb"] >= 0
    assert (tmp_path / "out" / "tunelab-run" / "train" / "curve.jsonl").read_text().count("\n") == WARM + 3
