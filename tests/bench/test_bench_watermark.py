"""`tunelab bench watermark`, small, on the default model: the marked replies score far above the unmarked
ones, and every figure the issue names is in the JSON with its goal."""

from __future__ import annotations

from pathlib import Path

from tests.bench import run_bench


def test_bench_watermark_small(tmp_path: Path) -> None:
    r = run_bench("watermark", tmp_path, "--prompts", "8", "--tokens", "48", "--finetune-steps", "2", "--deltas", "1.0")
    for k in ("tpr_at_fpr1", "fpr_human", "ppl_increase", "tpr_after_paraphrase", "tpr_after_finetune"):
        assert isinstance(r[k], float), k
    assert set(r["goals"]) == {"tpr_at_fpr1", "fpr_human", "ppl_increase"}
    assert r["prompts"] == 8 and r["human_texts"] == 8 and r["max_tokens"] == 48
    assert r["z_mean_marked"] > r["z_mean_unmarked"] + 2.0
    assert r["tpr_at_fpr1"] >= 0.5 and r["fpr_human"] <= 0.25
    assert (tmp_path / "finetuned-on-marked" / "adapter_config.json").is_file()
    assert set(r["by_delta"]) == {"1.0", str(r["delta"])}  # the asked delta beside the serving default
