"""tunelab's bf16 kernel (`tunelab.kernels`): built where the CPU and tools allow, exact
to fp32 rounding against a float64 product of the same bf16 numbers, and used by the lean decoder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KERNELS_CAN_BUILD
from tunelab import kernels

needs_kernel = pytest.mark.skipif(not KERNELS_CAN_BUILD, reason="no AVX512-BF16, compiler or ninja here")


def test_the_kernel_builds_wherever_it_can() -> None:
    why = kernels.why_not()
    if KERNELS_CAN_BUILD:
        assert why is None, why
    else:
        assert why  # a reason, and the operator name still resolves (the scripted loop names it)
        import torch

        with pytest.raises(RuntimeError, match="not loaded"):
            torch.ops.tunelab.linear_bf16(torch.zeros(1, 4), torch.zeros(1), None, 4)


@needs_kernel
@pytest.mark.parametrize(
    ("n", "k", "rows"), [(1, 2, 1), (15, 31, 2), (16, 32, 3), (50, 576, 4), (129, 70, 9), (960, 576, 17)]
)
@pytest.mark.parametrize("bias", [False, True])
def test_the_kernel_equals_a_float64_product_of_the_same_bf16_numbers(n: int, k: int, rows: int, bias: bool) -> None:
    import torch

    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=gen)
    x = torch.randn(rows, 1, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    y = torch.ops.tunelab.linear_bf16(x, torch.ops.tunelab.pack_bf16(w), b, n)
    ref = x.bfloat16().double() @ w.bfloat16().double().t() + (0 if b is None else b.double())
    assert y.shape == (rows, 1, n) and y.dtype == torch.float32
    # fp32 sums of exact bf16 x bf16 products: at most k fp32 roundings of the running sum (and one for the bias)
    mag = x.bfloat16().double().abs() @ w.bfloat16().double().abs().t() + (0 if b is None else b.double().abs())
    err = (y.double() - ref).abs()
    assert bool((err <= (k + 1) * 2**-24 * mag + 1e-30).all()), float(err.max())


@needs_kernel
def test_the_kernel_fuses_the_rmsnorm_into_its_input() -> None:
    """With `norm`: the product of bf16(RMSNorm(x)) as transformers computes the norm in fp32."""
    import torch

    from tunelab.serve.lean_script import rms

    gen = torch.Generator().manual_seed(1)
    n, k = 70, 37
    w, x, b = torch.randn(n, k, generator=gen), 3 * torch.randn(5, k, generator=gen), torch.randn(n, generator=gen)
    norm = torch.rand(k, generator=gen) + 0.5
    y = torch.ops.tunelab.linear_bf16(x, torch.ops.tunelab.pack_bf16(w), b, n, norm, 1e-5)
    h = rms(x, norm, 1e-5).bfloat16().double()
    ref = h @ w.bfloat16().double().t() + b.double()
    # the kernel's norm may round differently in the last fp32 bit, which can move h's bf16 rounding by one step
    torch.testing.assert_close(y.double(), ref, atol=2e-2, rtol=1e-2)
    assert float((y.double() - ref).abs().mean()) < 2e-3
    plain = torch.ops.tunelab.linear_bf16(x, torch.ops.tunelab.pack_bf16(w), b, n)
    assert not torch.allclose(y, plain)  # the norm did something


@needs_kernel
def test_the_kernel_refuses_weights_packed_for_other_sizes() -> None:
    import torch

    wp = torch.ops.tunelab.pack_bf16(torch.randn(32, 64))
    with pytest.raises(RuntimeError, match="other sizes"):
        torch.ops.tunelab.linear_bf16(torch.randn(1, 48), wp, None, 32)
    with pytest.raises(RuntimeError, match="other sizes"):
        torch.ops.tunelab.linear_bf16(torch.randn(1, 64), wp, None, 40)
    with pytest.raises(RuntimeError, match="fp32"):
        torch.ops.tunelab.linear_bf16(torch.randn(1, 64).double(), wp, None, 32)


@needs_kernel
@pytest.mark.parametrize("policy", ["this cpu", "as without amx"])
def test_lean_decoder_with_the_kernel_is_as_close_to_fp32_as_onednn(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    """bf16 with the kernel vs bf16 through oneDNN only, both against fp32, at 1 row, SMALL_ROWS rows and more:
    as close to fp32 as oneDNN is (they differ in summation order, and oneDNN rounds each product's result to
    bf16 where the kernel returns fp32). Without AMX, products of more rows than SMALL_ROWS are oneDNN's in
    both: bit for bit the same ("as without amx": the decoder's choice as on such a CPU)."""
    import torch

    from tunelab.models.loading import load_model
    from tunelab.serve.lean import LeanModel

    if policy != "this cpu":
        monkeypatch.setattr(kernels, "amx", lambda: False)
    model = load_model(tiny_model_dir).eval()
    rows_max = kernels.SMALL_ROWS + 1
    fast = LeanModel(model, max_rows=rows_max, quantize="bf16")
    fp32 = LeanModel(model, max_rows=rows_max)
    amx = kernels.amx()
    monkeypatch.setattr(kernels, "why_not", lambda: "off for this comparison")
    plain = LeanModel(model, max_rows=rows_max, quantize="bf16")
    assert fast.kernel == ("tunelab" if amx else "tunelab+onednn") and plain.kernel == "onednn"
    assert (fast.head.w is None) == amx  # with AMX oneDNN's copy of the weights is not kept

    def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
        return float((x - ref).norm() / ref.norm())

    for rows in (1, kernels.SMALL_ROWS, rows_max):
        prompts = [list(range(5 + r, 20 + 2 * r)) for r in range(rows)]
        none: list[str | None] = [None] * rows
        with torch.inference_mode():
            a, b, f = fast.add(prompts, none), plain.add(prompts, none), fp32.add(prompts, none)
            for _ in range(4):
                if rows <= kernels.SMALL_ROWS or amx:
                    assert 0 < rel(a, b) < 0.05
                    assert rel(a, f) < 1.5 * rel(b, f) + 1e-3, (rel(a, f), rel(b, f))
                else:
                    assert torch.equal(a, b)
                toks = [int(t) for t in f.argmax(-1)]
                a, b, f = fast.step(toks, none), plain.step(toks, none), fp32.step(toks, none)
            for m in (fast, plain, fp32):
                m.reset()


def test_without_the_kernel_the_decoder_still_runs(tiny_model_dir: Path) -> None:
    """TUNELAB_KERNELS=0 in a fresh process: the operator is a placeholder, bf16 goes through oneDNN."""
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from tunelab.models.loading import load_model\n"
        "from tunelab.serve.lean import LeanModel\n"
        "m = LeanModel(load_model(Path(sys.argv[1])), max_rows=2, quantize=sys.argv[2])\n"
        "with torch.inference_mode():\n"
        "    x = m.add([[5, 6, 7]], [None])\n"
        "    x = m.step([int(x.argmax(-1)[0])], [None])\n"
        "print(m.kernel, '|', m.kernel_note, '|', bool(torch.isfinite(x).all()))\n"
    )
    import torch

    q = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    out = subprocess.run(
        [sys.executable, "-c", code, str(tiny_model_dir), str(q) if q else ""],
        env={**os.environ, "TUNELAB_KERNELS": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    kernel, note, finite = (s.strip() for s in out.stdout.strip().splitlines()[-1].split("|"))
    assert finite == "True"
    if q:
        assert kernel == "onednn" and "TUNELAB_KERNELS=0" in note
