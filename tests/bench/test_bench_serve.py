"""`tunelab bench serve --quick` drives the real servers through the openai client and writes its JSON."""

from __future__ import annotations

from pathlib import Path

from tests.bench import run_bench
from tunelab import kernels
from tunelab.hardware import cpu_bf16, fbgemm


def test_bench_serve_quick_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    r = run_bench("serve", tmp_path, "--model", str(tiny_model_dir), "--quick")
    default = "bf16" if cpu_bf16() else "fp16" if fbgemm() else "fp32"  # `quantize: auto` on this machine
    assert r["setup"]["default_weights"] == default
    sides = {"tunelab": default, "tunelab_int8": "int8", "plain": "fp32"}
    if default != "fp32":
        sides["tunelab_fp32"] = "fp32"
    if default != "fp16" and fbgemm():
        sides["tunelab_fp16"] = "fp16"
    if default == "bf16":
        sides["plain_bf16"] = "bf16"
    alone_only = {"plain_bf16"}
    if default == "bf16" and kernels.ready():  # the default with oneDNN only: what tunelab's kernel adds
        sides["tunelab_onednn"] = "bf16"
        alone_only.add("tunelab_onednn")
        assert r["tunelab_onednn"]["environment"] == {"TUNELAB_KERNELS": "0"}
        assert r["setup"]["bf16_kernel"] == ("tunelab" if kernels.amx() else "tunelab+onednn")
        assert r["single_stream_ratio_kernel_vs_onednn"] == (
            r["tunelab"]["single"]["output_tokens_per_s"] / r["tunelab_onednn"]["single"]["output_tokens_per_s"]
        )
    assert {k for k in r if k.startswith(("tunelab", "plain"))} == set(sides)
    for side, weights in sides.items():
        assert r[side]["weights"] == weights
        assert r[side]["single"]["requests"] == 2
        load = r[side]["concurrent"]
        if side in alone_only:
            assert load is None  # timed alone only
            continue
        assert load["requests"] == 8 and load["completion_tokens"] > 0
        assert load["output_tokens_per_s"] == load["completion_tokens"] / load["wall_s"]
    plain = r["plain"]
    assert set(r["ratios"]) == {w for s, w in sides.items() if s.startswith("tunelab") and s not in alone_only}
    assert {ratio["side"] for ratio in r["ratios"].values()} == {
        s for s in sides if s.startswith("tunelab")
    } - alone_only
    for weights, ratio in r["ratios"].items():
        t = r[ratio["side"]]
        assert t["weights"] == weights
        assert ratio["throughput"] == (
            t["concurrent"]["output_tokens_per_s"] / plain["concurrent"]["output_tokens_per_s"]
        )
        assert ratio["single_stream"] == t["single"]["output_tokens_per_s"] / plain["single"]["output_tokens_per_s"]
    assert r["throughput_ratio"] == r["ratios"][default]["throughput"]
    assert set(r["quality"]) == set(r["ratios"]) - {"fp32"}
    for q in r["quality"].values():
        assert q["prompts"] == 8 and 0 < q["teacher_forced_top1_agreement"] <= 1
        assert 0 <= q["identical_completions"] <= 1
