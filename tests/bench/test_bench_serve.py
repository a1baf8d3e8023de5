"""`tunelab bench serve --quick` drives both real servers through the openai client and writes its JSON."""

from __future__ import annotations

from pathlib import Path

from tests.bench import run_bench


def test_bench_serve_quick_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    r = run_bench("serve", tmp_path, "--model", str(tiny_model_dir), "--quick")
    for side in ("tunelab", "tunelab_int8", "plain"):
        load = r[side]["concurrent"]
        assert load["requests"] == 8 and load["completion_tokens"] > 0
        assert load["output_tokens_per_s"] == load["completion_tokens"] / load["wall_s"]
        assert r[side]["single"]["requests"] == 2
    assert r["throughput_ratio"] == (
        r["tunelab"]["concurrent"]["output_tokens_per_s"] / r["plain"]["concurrent"]["output_tokens_per_s"]
    )
    assert r["throughput_ratio_int8"] == (
        r["tunelab_int8"]["concurrent"]["output_tokens_per_s"] / r["plain"]["concurrent"]["output_tokens_per_s"]
    )
    q = r["int8_quality"]
    assert q["prompts"] == 8 and 0 < q["teacher_forced_top1_agreement"] <= 1
    assert 0 <= q["identical_completions"] <= 1
