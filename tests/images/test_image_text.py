"""`task: image` on a Stable Diffusion-style pipeline directory (text-conditioned): the same run, in latents."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tunelab.images.sd import class_like, encode_text, is_pipeline, load_pipeline

from .conftest import build_tiny_pipeline


def _squares(root: Path, colours: dict[str, tuple[int, int, int]], n: int, seed: int) -> Path:
    """JSONL of coloured squares with a caption each: `{"image": ..., "text": "red square"}`."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, rgb in colours.items():
        for i in range(n):
            arr = np.full((16, 16, 3), 255, dtype=np.uint8)
            x, y = rng.integers(0, 8, 2)
            arr[y : y + 8, x : x + 8] = rgb
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            (root / f"{name}-{i}.png").write_bytes(buf.getvalue())
            rows.append({"image": f"{name}-{i}.png", "text": f"{name} square"})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "data.jsonl.datacard.yaml").write_text("licence: {id: CC0-1.0}\nsource: generated squares\n")
    return root / "data.jsonl"


def test_a_pipeline_directory_is_recognised_and_encodes_captions(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline(tmp_path / "sd", ["red", "blue", "square"])
    assert is_pipeline(pipe) and not is_pipeline(tmp_path)
    parts = load_pipeline(pipe)
    assert parts.resolution == 16
    h = encode_text(parts, ["red square", "blue square", "red square"])
    assert h.shape[0] == 3 and bool((h[0] == h[2]).all()) and not bool((h[0] == h[1]).all())
    assert class_like(["a", "a", "b", "b"]) and not class_like(["a", "b", "c"])


def test_text_conditioned_run_trains_and_evaluates_in_latent_space(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline(tmp_path / "sd", ["red", "blue", "square"])
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    cfg = {
        "task": "image",
        "model": {"name": str(pipe)},
        "data": {
            "train": [str(_squares(tmp_path / "train", colours, 4, 0))],
            "eval": [str(_squares(tmp_path / "eval", colours, 3, 1))],
        },
        "image": {"eval_seeds": 2, "sample_steps": 2, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]},
        "method": {"r": 2, "alpha": 2},
        "batch": {"size": 4},
        "checkpoint": {"every": 2},
        "train": {"max_steps": 4, "threads": 1},
        "eval": {"bootstrap_resamples": 100},
    }
    p = tmp_path / "sd.yaml"
    p.write_text(yaml.safe_dump(cfg))
    env_home = {"TUNELAB_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [sys.executable, "-m", "tunelab", "train", str(p), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env_home},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    r = tmp_path / "r"
    meta = json.loads((r / "model" / "tunelab_image.json").read_text())
    assert meta["conditioning"] == "text" and meta["classes"] == ["blue square", "red square"]
    assert meta["resolution"] == 16 and meta["channels"] == 3  # taken from the pipeline
    assert yaml.safe_load((r / "config.yaml").read_text())["image"]["channels"] == 3  # and recorded
    m = json.loads((r / "eval" / "metrics.json").read_text())
    assert m["class_accuracy"]["n"] == 4 and m["judge"]["classes"] == ["blue square", "red square"]
    assert (r / "checkpoints").is_dir() and json.loads((r / "summary.json").read_text())["examples"] == 8
    adapter = json.loads((r / "model" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] is None  # no class embedding in a text-conditioned UNet
    # served: the prompt is the text; the adapter chosen by name
    from tunelab.serve.config import ImagesConfig
    from tunelab.serve.images import ImageHost

    host = ImageHost(ImagesConfig(base=str(pipe), adapters={"squares": r / "model"}, sample_steps=2))
    assert host.models() == ["sd", "squares"] and host.text("squares") and host.size("squares") == "16x16"
    tuned = host.generate("squares", "red square", 2, seed=5)
    base = host.generate("sd", "red square", 2, seed=5)
    img = Image.open(io.BytesIO(tuned.pngs[0]))
    assert img.size == (16, 16) and img.mode == "RGB" and tuned.label == "red square"
    assert tuned.pngs != base.pngs  # the adapter changes what is drawn
    assert host.generate("squares", "red square", 2, seed=5).pngs == tuned.pngs  # and a seed repeats it


def test_free_captions_train_without_a_judge_and_say_so(tmp_path: Path) -> None:
    pipe = build_tiny_pipeline(tmp_path / "sd", ["red", "blue", "square", "one", "two", "three", "four"])
    data = _squares(tmp_path / "train", {"red": (220, 30, 30), "blue": (30, 30, 220)}, 2, 0)
    words = ["one", "two", "three", "four"]
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    data.write_text("".join(json.dumps({**r, "text": f"{r['text']} {words[i]}"}) + "\n" for i, r in enumerate(rows)))
    cfg = {
        "task": "image",
        "model": {"name": str(pipe)},
        "data": {"train": [str(data)]},
        "image": {"eval_seeds": 2, "sample_steps": 2},
        "batch": {"size": 2},
        "train": {"max_steps": 2},
    }
    p = tmp_path / "free.yaml"
    p.write_text(yaml.safe_dump(cfg))
    run = subprocess.run(
        [sys.executable, "-m", "tunelab", "train", str(p), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TUNELAB_HOME": str(tmp_path / "home")},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no judge" in run.stdout
    m = json.loads((tmp_path / "r" / "eval" / "metrics.json").read_text())
    assert m["class_accuracy"] is None and m["kid"] is None and m["memorisation"]["of"] == 8
    assert "only memorisation was measured" in (tmp_path / "r" / "model" / "README.md").read_text()
