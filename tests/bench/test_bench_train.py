"""`tunelab bench train` runs tunelab's engine and HF Trainer for real, on the same examples, in one precision."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench import run_bench


@pytest.mark.slow
def test_bench_train_compares_like_with_like(tmp_path: Path) -> None:
    r = run_bench("train", tmp_path / "b", "--quick", "--steps", "2", "--eval-items", "10", "--precision", "fp32")
    t, h = r["tunelab"], r["hf_trainer"]
    assert r["setup"]["precision"] == "fp32" and t["precision"] == "fp32" and h["precision"].startswith("fp32")
    assert "hf_trainer_default" not in r  # in fp32 the same-precision peer is Trainer's default
    assert len(t["losses"]) == len(h["losses"]) == 2
    # the same examples: the same real tokens, Trainer's padded to each batch's longest
    assert t["real_tokens"] == h["real_tokens"] <= h["padded_tokens"]
    # the same model, data and loss normalisation: the first step (adapters still zero) has the same loss
    assert t["losses"][0] == pytest.approx(h["losses"][0], rel=1e-3)
    assert r["speed_ratio"] == t["tokens_per_s"] / h["tokens_per_s"]
    assert r["memory_ratio"] == t["peak_rss_gb"] / h["peak_rss_gb"]
    assert (
        r["mfu"]
        == r["mfu_vs_fp32_peak"]
        == t["tokens_per_s"] * r["setup"]["flops_per_token"] / r["setup"]["matmul_flops_fp32"]
    )
    assert r["quality"]["items"] == 10 and 0 <= r["quality"]["tunelab_accuracy"] <= 1
