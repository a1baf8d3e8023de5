"""The quickstart through `--model PATH`: any local Hugging Face directory takes the same path as the default."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.quickstart import QuickstartOptions, run_quickstart

FAST = [
    "data.max_words=12",
    "data.max_length=4096",
    "data.eval_per_class=4",
    "eval.latency_samples=2",
    "eval.bootstrap_resamples=200",
    "eval.max_new_tokens=3",
]


def test_quickstart_runs_on_a_local_model_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    s = run_quickstart(QuickstartOptions(out=out, max_steps=2, model=str(tiny_model_dir), overrides=FAST))
    assert s["model"]["path"] == str(tiny_model_dir.resolve())
    assert s["base"]["n"] == s["tuned"]["n"] == 20
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    curve = [json.loads(x) for x in (out / "train" / "curve.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [1, 2]
    assert (out / "model" / "adapter_model.safetensors").is_file()
    assert "Did fine-tuning help?" in (out / "report.html").read_text()
    events = [json.loads(x)["event"] for x in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1] == "done" and "train_step" in events
