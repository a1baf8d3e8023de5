"""`tunelab bench eval` runs both sides for real (lm-eval offline on a local task YAML) and agrees item by item."""

from __future__ import annotations

from pathlib import Path

from tests.bench import run_bench


def test_bench_eval_against_lm_eval_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    r = run_bench("eval", out, "--model", str(tiny_model_dir), "--items", "10")
    assert r["setup"]["items"] == 10
    # the same log-likelihoods: the same answer on (nearly) every item, not just the same total
    assert r["item_agreement"] >= 0.9 and r["agreement_abs_diff"] <= 0.1
    for side in ("tunelab", "lm_eval"):
        assert r[side]["wall_s"] > 0 and r[side]["peak_rss_gb"] > 0
    assert r["speed_ratio"] == r["lm_eval"]["wall_s"] / r["tunelab"]["wall_s"]
    task_yaml = (out / "lm_eval_task" / "tunelab_bbc_headlines.yaml").read_text()
    assert "dataset_path: json" in task_yaml and str(out / "data" / "bbc-headlines.jsonl") in task_yaml
