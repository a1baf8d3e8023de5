"""`tunelab bench serve --quick` drives both real servers through the openai client and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_serve_quick_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunelab",
            "bench",
            "serve",
            "--model",
            str(tiny_model_dir),
            "--quick",
            "--json",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout)
    assert r == json.loads((tmp_path / "bench-serve.json").read_text())
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
