"""`tunelab train` with `task: image` on a tiny UNet: the whole run, kill -9 then --resume, DDP, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.train.test_train_command import _kill_when

from .conftest import write_digits

TUNELAB = [sys.executable, "-m", "tunelab"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TUNELAB_HOME": str(home)}


def _config(tmp: Path, base: Path, **train: object) -> Path:
    data = write_digits(tmp / "train", {"5": 4, "6": 4})
    evald = write_digits(tmp / "eval", {"5": 4, "6": 4}, start=30)
    for d in ("train", "eval"):
        (tmp / f"{d}.datacard.yaml").write_text("licence: {id: CC-BY-4.0}\nsource: scikit-learn digits\n")
    cfg = {
        "task": "image",
        "model": {"name": str(base)},
        "data": {"train": [str(data)], "eval": [str(evald)]},
        "image": {"resolution": 8, "eval_seeds": 3, "sample_steps": 2, "prior_images": 2},
        "method": {"r": 2, "alpha": 2, "dropout": 0.1},  # dropout: the RNG state must be restored too
        "batch": {"size": 4},
        "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": 2, "keep_last": 2},
        "train": {"max_steps": 8, "threads": 1, "precision": "fp32", **train},
        "eval": {"bootstrap_resamples": 200},
    }
    p = tmp / "image.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNELAB, *args], capture_output=True, text=True, timeout=600, env=_env(home))


def test_image_run_end_to_end_and_kill_9_then_resume(tiny_base: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cfg = _config(tmp_path, tiny_base)
    ref = run(home, "train", str(cfg), "--out", str(tmp_path / "a"))
    assert ref.returncode == 0, ref.stderr
    a = tmp_path / "a"
    s = json.loads((a / "summary.json").read_text())
    assert s["task"] == "image" and s["new_classes"] == ["5", "6"] and s["examples"] == 8
    assert s["prior_images"] == 4  # 2 samples of each of the base's classes 0 and 1
    meta = json.loads((a / "model" / "tunelab_image.json").read_text())
    assert meta["classes"] == ["0", "1", "5", "6"]  # new classes in the free slots
    assert (a / "model" / "adapter_config.json").is_file()
    assert "class accuracy" in (a / "model" / "README.md").read_text()
    m = json.loads((a / "eval" / "metrics.json").read_text())
    assert m["class_accuracy"]["n"] == 6 and m["kid"]["real_images"] == 8
    assert m["target_classes"] == ["5", "6"] and m["other_classes"] == []  # no real images of 0/1 to judge by
    rows = [json.loads(x) for x in (a / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len({r["seed"] for r in rows}) == 3  # the same seeds per class, for both models
    html = (a / "report.html").read_text()
    assert "data:image/png;base64," in html and "Does it copy its training images?" in html
    verify = run(home, "govern", "verify", str(a))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    ev = run(home, "govern", "evidence", str(a), "--out", str(tmp_path / "ev"))
    assert ev.returncode == 0, ev.stderr
    facts = json.loads((tmp_path / "ev" / "evidence.json").read_text())["facts"]
    for name in ("paired_eval", "probe_memorisation", "licence", "data_provenance", "dedup", "model_card"):
        assert facts[name]["present"], name  # what an image run measured is evidence too
    assert "class accuracy of generated images" in facts["paired_eval"]["figure"]

    b = tmp_path / "b"
    proc = subprocess.Popen([*TUNELAB, "train", str(cfg), "--out", str(b)], env=_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, b / "checkpoints" / "step-000004")
    assert not (b / "summary.json").exists()
    res = run(home, "train", "--resume", str(b))
    assert res.returncode == 0, res.stderr
    wa = load_file(str(a / "model" / "adapter_model.safetensors"))
    wb = load_file(str(b / "model" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and any("class_embedding" in k for k in wa)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) == 0.0
    ca = [json.loads(x)["loss"] for x in (a / "train" / "curve.jsonl").read_text().splitlines()]
    cb = [json.loads(x)["loss"] for x in (b / "train" / "curve.jsonl").read_text().splitlines()]
    assert len(ca) == 8 and ca == cb
    assert json.loads((b / "summary.json").read_text())["resumed_from_step"] >= 4


def test_image_run_under_torchrun_with_two_processes(tiny_base: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_base, max_steps=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "tunelab", "train", str(cfg), "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(tmp_path / "home"))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert s["processes"] == 2 and s["steps"] == 4


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        ({"data": {"train": ["nowhere"]}}, 2, "nowhere"),
        ({"policy": {"allowed_licences": ["MIT"]}}, 1, "CC-BY-4.0"),
        ({"image": {"resolution": 16}}, 2, "image.resolution"),
    ],
)
def test_image_run_refuses_bad_input_with_a_clear_message(
    tiny_base: Path, tmp_path: Path, change: dict[str, dict[str, object]], code: int, says: str
) -> None:
    p = _config(tmp_path, tiny_base)
    cfg = yaml.safe_load(p.read_text())
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    p.write_text(yaml.safe_dump(cfg))
    res = run(tmp_path / "home", "train", str(p), "--out", str(tmp_path / "r"))
    assert res.returncode == code, res.stderr
    assert says in res.stderr


def test_full_fine_tuning_saves_the_whole_unet_and_serves_it(tiny_base: Path, tmp_path: Path) -> None:
    from tunelab.serve.config import ImagesConfig
    from tunelab.serve.images import ImageHost

    p = _config(tmp_path, tiny_base, max_steps=2)
    cfg = yaml.safe_load(p.read_text())
    cfg["method"] = {"kind": "full"}
    p.write_text(yaml.safe_dump(cfg))
    res = run(tmp_path / "home", "train", str(p), "--out", str(tmp_path / "full"))
    assert res.returncode == 0, res.stderr[-3000:]
    model = tmp_path / "full" / "model"
    assert (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (model / "adapter_config.json").exists()
    host = ImageHost(ImagesConfig(base=str(tiny_base), adapters={"full": model}, sample_steps=2))
    assert len(host.generate("full", "5", 1, seed=0).pngs) == 1


def test_bf16_lora_holds_the_frozen_unet_in_bf16_and_gives_it_back(tiny_base: Path, tmp_path: Path) -> None:
    import torch

    from tunelab.config import build_config
    from tunelab.images.train import prepare, train_unet
    from tunelab.images.unet import load_base
    from tunelab.progress import Reporter

    unet, sched, meta = load_base(tiny_base)
    cfg = build_config({"task": "image", "train": {"max_steps": 2, "precision": "bf16", "threads": 1},
                        "batch": {"size": 4}, "image": {"resolution": 8}})  # fmt: skip
    model = prepare(unet, cfg)
    res = train_unet(model, sched, torch.randn(8, 1, 8, 8), torch.tensor([0, 1] * 4), meta, cfg, Reporter(quiet=True))
    assert res.precision == "bf16 autocast, frozen weights in bf16"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res.curve)
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # fp32 again after training
