"""Native CPU kernels, compiled on this machine the first time they are needed.

- `bf16_linear.cpp` (serving: the lean decoder): y = x W^T + b with bf16 weights in the kernel's own layout,
  optionally with the RMSNorm before it fused into the rounding of its input: on AMX tiles where the CPU has
  them (every product, prefill included), else through AVX512-BF16 for up to `SMALL_ROWS` rows (a decoding
  step), oneDNN doing the rest.
- `attention_bf16.cpp` (training: packed rows): causal attention inside each example of a packed row, forward
  and backward, in bf16 (`attention_why_not()` says whether training uses it).

The build goes through `torch.utils.cpp_extension` (a C++ compiler and ninja; ~10 s once, then cached by a
hash of the source in torch's extension directory, `$TORCH_EXTENSIONS_DIR` or ~/.cache/torch_extensions).
Both files are one extension. Where anything is missing (no AVX512-BF16, no compiler, a failed build or
self-test) the decoder keeps using oneDNN, training PyTorch's attention, and `why_not()` says why.
`TUNELAB_KERNELS=0` turns the kernels off (for comparisons).

The operators live in the `tunelab` namespace (`torch.ops.tunelab.linear_bf16`), which the scripted layer loop
names; when the kernel cannot be loaded the same schema is defined with an implementation that raises, so the
loop still compiles (it only calls the kernel for weights that were packed by it).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from tunelab.hardware import cpu_flags

# Without AMX (AVX512-BF16 only) up to this many rows per product the kernel is as fast as oneDNN or faster, and
# oneDNN keeps the rest (prefill); with AMX the kernel does every product and oneDNN's copy is not kept.
SMALL_ROWS = 8
ALL_ROWS = 1 << 40  # "every product" (times a row width it stays inside int64)
SOURCES = [Path(__file__).with_name(n) for n in ("bf16_linear.cpp", "attention_bf16.cpp")]
_lock = threading.Lock()
_state: dict[str, Any] = {}


def why_not() -> str | None:
    """None when the bf16 kernel is loaded and passed its self-test; otherwise why it is not used."""
    with _lock:
        if "why" not in _state:
            why = _load()
            if why:
                _placeholder()
            _state["why"] = why
        return _state["why"]


def ready() -> bool:
    return why_not() is None


def amx() -> bool:
    """The kernel runs on AMX tiles here (then it is as fast as oneDNN for every batch size, prefill included)."""
    if not ready():
        return False
    import torch

    return bool(torch.ops.tunelab.amx_bf16())


def bf16_rows() -> int:
    """The lean decoder's bf16 products of up to this many rows go to the kernel here: ALL_ROWS on AMX,
    SMALL_ROWS with AVX512-BF16 alone, 0 where the kernel is not loaded."""
    return 0 if not ready() else ALL_ROWS if amx() else SMALL_ROWS


def bf16_products(rows: int) -> str:
    """Who does bf16 products with that limit (what `/health` reports as `kernel`)."""
    return "onednn" if not rows else "tunelab" if rows >= ALL_ROWS else "tunelab+onednn"


def _load() -> str | None:
    if os.environ.get("TUNELAB_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return "turned off (TUNELAB_KERNELS=0)"
    if "avx512_bf16" not in cpu_flags():
        return "the CPU has no AVX512-BF16"
    if not (shutil.which("c++") or shutil.which("g++")):
        return "no C++ compiler (c++ or g++) on PATH"
    import torch
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        return "ninja is not on PATH"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES) + torch.__version__.encode()).hexdigest()[:12]
    name = f"tunelab_bf16_{digest}"
    try:
        built = (Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:  # a private helper of torch's: only decides whether to say that a build is coming
        built = True
    if not built:
        print("building tunelab's bf16 kernels for this CPU (once, ~20 s)", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(p) for p in SOURCES],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    except Exception as e:  # a compiler error: say what it was, keep serving with oneDNN
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        return "the build failed: " + " | ".join(lines[-3:])[:500]
    return _self_test()


def _self_test() -> str | None:
    """The kernel against a float64 product of the same bf16-rounded numbers, on sizes with every tail case."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for n, k, m in ((37, 33, 1), (70, 64, 3), (16, 1536, 4), (100, 576, 13)):
        w = torch.randn(n, k, generator=gen)
        x = torch.randn(2, m, k, generator=gen)
        b = torch.randn(n, generator=gen)
        y = torch.ops.tunelab.linear_bf16(x, torch.ops.tunelab.pack_bf16(w), b, n)
        ref = x.bfloat16().double() @ w.bfloat16().double().t() + b.double()
        err = float((y.double() - ref).abs().max())
        if y.shape != (2, m, n) or not err <= 1e-4 * max(1.0, float(ref.abs().max())):
            return f"the self-test failed ({n}x{k} weight, {m} rows: max error {err:.3g})"
    return None


def _placeholder() -> None:
    """Define the operators' schema, implemented as an error, where the kernel could not be loaded."""
    import torch

    try:
        torch.ops.tunelab.linear_bf16  # noqa: B018 (already defined: the kernel was loaded after all)
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("tunelab", "DEF")
    lib.define("linear_bf16(Tensor x, Tensor wp, Tensor? b, int n, Tensor? norm=None, float eps=0.0) -> Tensor")
    lib.define("pack_bf16(Tensor w) -> Tensor")
    lib.define("amx_bf16() -> bool")

    def missing(*args: Any) -> Any:
        raise RuntimeError(f"tunelab's bf16 kernel is not loaded: {_state.get('why')}")

    lib.impl("linear_bf16", missing, "CPU")
    lib.impl("pack_bf16", missing, "CPU")
    lib.impl("amx_bf16", missing, "CompositeExplicitAutograd")
    _state["lib"] = lib  # the registration lives as long as this object


def attention_why_not() -> str | None:
    """None when training's bf16 attention kernel is loaded and passed its self-test; otherwise why not."""
    why = why_not()
    if why:
        return why
    with _lock:
        if "attention_why" not in _state:
            _state["attention_why"] = _attention_self_test()
        return _state["attention_why"]


def attention_reference(q: Any, k: Any, v: Any, cu: list[int], scale: float) -> Any:
    """Causal attention inside each example of a packed row, in float64: q [H, T, D], k/v [Hkv, T, D] ->
    [T, H, D], zero after cu[-1] (what `attention_bf16` computes; differentiable, for tests)."""
    import torch

    q, k, v = q.double(), k.double(), v.double()
    group = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
    out = []
    for s, e in itertools.pairwise(cu):
        sc = (q[:, s:e] @ k[:, s:e].transpose(1, 2)) * scale
        mask = torch.ones(e - s, e - s, dtype=torch.bool).triu(1)
        out.append(sc.masked_fill(mask, float("-inf")).softmax(-1) @ v[:, s:e])
    out.append(q.new_zeros(q.shape[0], q.shape[1] - cu[-1], v.shape[-1]))
    return torch.cat(out, 1).transpose(0, 1)


def _attention_self_test() -> str | None:
    """Forward and backward against float64 on packed rows with every tail case (1 token, not a multiple of
    the kernel's blocks, grouped heads, filler after the last example)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for heads, kv, d, lens in ((4, 2, 32, (1, 33, 70)), (3, 3, 64, (129,))):
        cu = [0, *itertools.accumulate(lens)]
        t = cu[-1] + 3
        q, k, v = (torch.randn(t, h, d, generator=gen).bfloat16().transpose(0, 1) for h in (heads, kv, kv))
        dout = torch.randn(t, heads, d, generator=gen).bfloat16()
        o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, d**-0.5)
        grads = torch.ops.tunelab.attention_bf16_backward(dout, q, k, v, o, lse, cu, d**-0.5)
        leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
        ref = attention_reference(leaves[0], leaves[1], leaves[2], cu, d**-0.5)
        ref.backward(dout.double())
        for name, got, want in zip(
            ("output", "dq", "dk", "dv"), (o, *grads), (ref, *(x.grad for x in leaves)), strict=True
        ):
            want = want.detach()
            err = float((got.double() - want).abs().max()) / max(1e-6, float(want.abs().max()))
            if got.shape != want.shape or not err <= 2e-2:
                return f"the attention self-test failed ({name}, lengths {lens}: relative error {err:.3g})"
    return None
