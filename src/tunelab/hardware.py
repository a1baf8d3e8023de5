"""What this machine's CPU can do, read once from /proc/cpuinfo (empty where there is none)."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_bf16() -> bool:
    """bf16 matrix products in hardware (AVX512-BF16 or AMX); elsewhere oneDNN emulates them, slowly."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_vnni() -> bool:
    """8-bit dot products that sum into 32 bits (AVX512-VNNI or AVX-VNNI)."""
    return bool({"avx512_vnni", "avx_vnni"} & cpu_flags())


def fbgemm() -> bool:
    """PyTorch's fbgemm kernels (x86): packed int8 and fp16 weights for small-batch products."""
    import torch

    return "fbgemm" in torch.backends.quantized.supported_engines
