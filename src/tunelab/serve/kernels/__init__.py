"""Native kernels of the lean decoder, compiled on this machine the first time they are needed.

`bf16_linear.cpp`: y = x W^T + b with bf16 weights in the kernel's own layout, optionally with the RMSNorm
before it fused into the rounding of its input: on AMX tiles where the CPU has them (every product, prefill
included), else through AVX512-BF16 for up to `SMALL_ROWS` rows (a decoding step), oneDNN doing the rest.

The build goes through `torch.utils.cpp_extension` (a C++ compiler and ninja; ~10 s once, then cached by a
hash of the source in torch's extension directory, `$TORCH_EXTENSIONS_DIR` or ~/.cache/torch_extensions).
Where anything is missing (no AVX512-BF16, no compiler, a failed build or self-test) the decoder keeps using
oneDNN and `why_not()` says why. `TUNELAB_KERNELS=0` turns the kernels off (for comparisons).

The operators live in the `tunelab` namespace (`torch.ops.tunelab.linear_bf16`), which the scripted layer loop
names; when the kernel cannot be loaded the same schema is defined with an implementation that raises, so the
loop still compiles (it only calls the kernel for weights that were packed by it).
"""

from __future__ import annotations

import hashlib
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
SOURCE = Path(__file__).with_name("bf16_linear.cpp")
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
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode()).hexdigest()[:12]
    name = f"tunelab_bf16_{digest}"
    try:
        built = (Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so").exists()
    except Exception:  # a private helper of torch's: only decides whether to say that a build is coming
        built = True
    if not built:
        print("building tunelab's bf16 kernel for this CPU (once, ~10 s)", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
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
