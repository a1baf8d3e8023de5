"""`tunelab train` as a user runs it: config errors, the audit gate, and kill -9 then --resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import chat, write_jsonl

TUNELAB = [sys.executable, "-m", "tunelab"]
WORDS = ["goal", "match", "striker", "shares", "profit", "market", "phone", "chip", "minister", "vote", "film", "award"]


def _data(path: Path, n: int = 24, words: int = 60) -> Path:
    rng = random.Random(0)
    rows = [
        chat(" ".join(rng.choice(WORDS) for _ in range(words)), rng.choice(["sport", "business", "tech"]))
        for _ in range(n)
    ]
    write_jsonl(path, rows)
    (path.parent / (path.name + ".datacard.yaml")).write_text("licence: {id: MIT}\nsource: generated\n")
    return path


def _config(tmp: Path, model: Path, **train: object) -> Path:
    cfg = {
        "model": {"name": str(model)},
        "data": {"task": None, "train": [str(_data(tmp / "train.jsonl"))], "max_length": 512},
        "method": {"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.1},
        "optimizer": {"lr": 5e-3},
        "schedule": {"kind": "cosine", "warmup_steps": 3},
        "batch": {"size": 4},
        "checkpoint": {"every": 2, "keep_last": 2},
        # fp32: the tests compare runs for exact arithmetic (bf16 is covered in test_engine)
        "train": {"max_steps": 40, "threads": 1, "precision": "fp32", **train},
    }
    p = tmp / "run.yaml"
    p.write_text("# tunelab train run.yaml\n" + yaml.safe_dump(cfg))
    return p


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TUNELAB, *args], capture_output=True, text=True, timeout=timeout)


def _kill_when(proc: subprocess.Popen[bytes], path: Path, timeout: float = 240) -> None:
    """SIGKILL the process as soon as `path` exists (a checkpoint has just been committed)."""
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before {path.name} appeared")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out")
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model_dir)
    ref = run("train", str(cfg), "--out", str(tmp_path / "a"))
    assert ref.returncode == 0, ref.stderr

    b = tmp_path / "b"
    devnull = subprocess.DEVNULL
    proc = subprocess.Popen([*TUNELAB, "train", str(cfg), "--out", str(b)], stdout=devnull, stderr=devnull)
    _kill_when(proc, b / "checkpoints" / "step-000006")
    proc = subprocess.Popen([*TUNELAB, "train", "--resume", str(b)], stdout=devnull, stderr=devnull)
    _kill_when(proc, b / "checkpoints" / "step-000020")  # killed again, mid-way through the resumed run
    assert not (b / "summary.json").exists()
    res = run("train", "--resume", str(b))
    assert res.returncode == 0, res.stderr

    wa = load_file(str(tmp_path / "a" / "model" / "adapter_model.safetensors"))
    wb = load_file(str(b / "model" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) <= 1e-6
    ca = [json.loads(x)["loss"] for x in (tmp_path / "a" / "train" / "curve.jsonl").read_text().splitlines()]
    cb = [json.loads(x)["loss"] for x in (b / "train" / "curve.jsonl").read_text().splitlines()]
    assert len(ca) == 40 and ca == cb  # the loss curve continues with the same values
    summary = json.loads((b / "summary.json").read_text())
    assert summary["resumed_from_step"] >= 20
    assert len(list((b / "checkpoints").glob("step-*"))) <= 2  # keep_last
    assert torch.isfinite(torch.tensor(ca)).all()


def test_the_documented_preset_command_line_parses(tmp_path: Path) -> None:
    # `tunelab train --preset quickstart --max-steps 12 --set checkpoint.every=3 --out DIR`: checked up to
    # the model (a missing model gives exit 2 quickly, after the config was accepted).
    res = run(
        "train", "--preset", "quickstart", "--max-steps", "12", "--set", "checkpoint.every=3",
        "--set", "model.name=/nonexistent-model", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert res.returncode == 2
    assert "nonexistent-model" in res.stderr and "config" not in res.stderr.lower()


@pytest.mark.parametrize(
    ("override", "expected"),
    [("optimizer.lrr=1", "optimizer.lrr"), ("batch.size=zero", "batch.size"), ("method.kind=qlora", "method.kind")],
)
def test_config_errors_name_the_key_and_the_file(
    tiny_model_dir: Path, tmp_path: Path, override: str, expected: str
) -> None:
    cfg = _config(tmp_path, tiny_model_dir)
    res = run("train", str(cfg), "--set", override, "--out", str(tmp_path / "r"))
    assert res.returncode == 2
    assert expected in res.stderr and "run.yaml" in res.stderr
    assert "Traceback" not in res.stderr


def test_failing_audit_stops_training_unless_forced(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model_dir, max_steps=2)
    policy = {"policy": {"allowed_licences": ["Apache-2.0"], "unknown_licence": "fail"}}
    data = yaml.safe_load(cfg.read_text())
    data.update(policy)
    cfg.write_text(yaml.safe_dump(data))
    res = run("train", str(cfg), "--out", str(tmp_path / "r1"))
    assert res.returncode == 1, res.stderr
    assert "audit failed" in res.stderr and "--force" in res.stderr
    assert not (tmp_path / "r1" / "model").exists()
    res = run("train", str(cfg), "--out", str(tmp_path / "r2"), "--force")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "r2" / "manifest.json").read_text())
    assert manifest["audit"] == {"verdict": "fail", "forced": True, "reasons": manifest["audit"]["reasons"]}
    assert manifest["audit"]["reasons"]
    assert "--force" in (tmp_path / "r2" / "model" / "README.md").read_text()


def test_resume_refuses_changed_data(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model_dir, max_steps=3)
    assert run("train", str(cfg), "--out", str(tmp_path / "r")).returncode == 0
    data = tmp_path / "train.jsonl"
    data.write_text(data.read_text().replace("sport", "sports"))
    res = run("train", "--resume", str(tmp_path / "r"))
    assert res.returncode == 2
    assert "changed since the run started" in res.stderr


def test_two_processes_with_the_same_global_batch_give_the_same_loss_curve(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, tiny_model_dir, max_steps=6)
    data = yaml.safe_load(cfg.read_text())
    data["method"]["dropout"] = 0.0  # dropout masks differ per process by design
    data["checkpoint"]["every"] = 3
    cfg.write_text(yaml.safe_dump(data))
    one = run("train", str(cfg), "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tunelab", "train", str(cfg), "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    c1 = [json.loads(x) for x in (tmp_path / "one" / "train" / "curve.jsonl").read_text().splitlines()]
    c2 = [json.loads(x) for x in (tmp_path / "two" / "train" / "curve.jsonl").read_text().splitlines()]
    assert len(c1) == len(c2) == 6
    assert [r["loss"] for r in c2] == pytest.approx([r["loss"] for r in c1], rel=1e-5)
    assert c1[-1]["real_tokens"] == c2[-1]["real_tokens"]
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["processes"] == 2
    w1 = load_file(str(tmp_path / "one" / "model" / "adapter_model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model" / "adapter_model.safetensors"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-4


def test_dpo_from_a_preference_file_quarantines_bad_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    rows: list[object] = [
        {"prompt": f"Topic of: {' '.join(rng.choice(WORDS) for _ in range(12))}?",
         "chosen": "sport", "rejected": "business"}
        for _ in range(10)
    ]  # fmt: skip
    rows.insert(3, {"prompt": "q", "chosen": "same", "rejected": "same"})
    rows.insert(6, "{broken json")
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    (tmp_path / "prefs.jsonl.datacard.yaml").write_text("licence: {id: CC-BY-4.0}\n")
    cfg = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"task": None, "train": [str(prefs)]},
        "method": {"kind": "lora", "objective": "dpo", "beta": 0.5, "r": 4, "alpha": 8},
        "optimizer": {"lr": 1e-2},
        "batch": {"size": 4},
        "train": {"max_steps": 6, "threads": 1},
        "policy": {"max_quarantined_ratio": 0.5},
    }
    p = tmp_path / "dpo.yaml"
    p.write_text("# tunelab train dpo.yaml\n" + yaml.safe_dump(cfg))
    res = run("train", str(p), "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    bad = [json.loads(x) for x in (tmp_path / "r" / "audit" / "preferences-quarantine.jsonl").read_text().splitlines()]
    assert [(b["line"], b["field"]) for b in bad] == [(4, "rejected"), (7, "")]
    assert all(b["file"] == str(prefs) for b in bad)
    curve = [json.loads(x) for x in (tmp_path / "r" / "train" / "curve.jsonl").read_text().splitlines()]
    assert curve[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert curve[-1]["loss"] < curve[0]["loss"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["examples"] == 10 and summary["objective"] == "dpo"


def test_train_plants_canaries_and_the_chain_verifies(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _config(tmp_path, tiny_model_dir, max_steps=2)
    data = yaml.safe_load(cfg.read_text())
    data["data"].update({"canaries": 2, "canary_repeats": 2})
    cfg.write_text(yaml.safe_dump(data))
    res = run("train", str(cfg), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["canaries"] == {"planted": 2, "repeats": 2, "file": "data/canaries.json"}
    assert [r["path"] for r in m["inputs"]["canaries"]] == ["data/canaries.json"]
    assert json.loads((tmp_path / "run" / "train" / "curve.jsonl").read_text().splitlines()[0])["step"] == 1
    ok = run("govern", "verify", str(tmp_path / "run"))
    assert ok.returncode == 0 and "ok: " in ok.stdout, ok.stderr
