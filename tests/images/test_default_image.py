"""The default image base and task as `tunelab train --preset image` makes them (with a short pre-training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.images import base as base_mod
from tunelab.images.command import run_image_train
from tunelab.images.unet import read_meta
from tunelab.progress import Reporter
from tunelab.train.command import TrainOptions


def test_the_digits_task_is_written_as_a_user_would_write_it(tmp_path: Path) -> None:
    train, evalf = base_mod.write_digits_task(tmp_path, per_class=8, seed=0)
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    held = [json.loads(x) for x in evalf.read_text().splitlines()]
    assert len(rows) == 40 and sorted({r["label"] for r in rows}) == base_mod.NEW_CLASSES
    assert len(held) == 856 and not {r["image"] for r in rows} & {r["image"] for r in held}
    assert "CC-BY-4.0" in (tmp_path / "train.jsonl.datacard.yaml").read_text()
    again, _ = base_mod.write_digits_task(tmp_path / "again", per_class=8, seed=0)
    assert again.read_text() == train.read_text()  # the same seed, the same choice


def test_preset_image_builds_the_base_once_and_teaches_it_new_digits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(base_mod, "PRETRAIN_STEPS", 3)  # the real one is 1,500 steps (4 minutes)
    opts = TrainOptions(preset="image", max_steps=3, out=tmp_path / "run",
                        overrides=["image.eval_seeds=2", "image.sample_steps=2", "image.prior_images=1",
                                   "eval.bootstrap_resamples=100"])  # fmt: skip
    s = run_image_train(opts, lambda **kw: Reporter(quiet=True, **kw))  # type: ignore[arg-type, misc]
    made = tmp_path / "home" / "models" / base_mod.DEFAULT_IMAGE_MODEL
    meta = read_meta(made)
    assert meta.classes == base_mod.BASE_CLASSES and meta.slots == 16 and meta.made_by["steps"] == 3
    assert meta.made_by["data_licence"] == "CC-BY-4.0" and len(meta.made_by["data_sha256"]) == 64
    assert (made / "model_index.json").is_file() and (made / "README.md").is_file()
    assert s["new_classes"] == base_mod.NEW_CLASSES and s["examples"] == 40 and s["prior_images"] == 5
    m = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert m["other_classes"] == base_mod.BASE_CLASSES  # the base's own digits are judged too
    assert m["judge"]["held_out_accuracy"] > 0.9  # a judge that reads real digits
    assert len(m["per_class"]) == 10
