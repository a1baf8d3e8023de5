"""`tunelab bench eval` runs both sides for real (lm-eval offline on a local task YAML) and agrees item by item."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_eval_against_lm_eval_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "bench",
            "eval",
            "--model",
            str(tiny_model_dir),
            "--items",
            "10",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert r == json.loads((out / "bench-eval.json").read_text())
    assert r["setup"]["items"] == 10
    # the same log-likelihoods: the same answer on (nearly) every item, not just the same total
    assert r["item_agreement"] >= 0.9 and r["agreement_abs_diff"] <= 0.1
    for side in ("tunelab", "lm_eval"):
        assert r[side]["wall_s"] > 0 and r[side]["peak_rss_gb"] > 0
    assert r["speed_ratio"] == r["lm_eval"]["wall_s"] / r["tunelab"]["wall_s"]
    task_yaml = (out / "lm_eval_task" / "tunelab_bbc_headlines.yaml").read_text()
    assert "dataset_path: json" in task_yaml and str(out / "data" / "bbc-headlines.jsonl") in task_yaml
