"""Attention over packed rows without padding and without crossing example boundaries.

A packed micro-batch is one row holding several examples back to back. `varlen_attention` runs causal
attention on each example's slice alone (boundaries from `cu_seqlens`), so no token attends across an
example and no padding or `T x T` mask is ever computed. Position ids restart at each example, so rotary
embeddings see the same positions as for the example alone.

In bf16 on a CPU with AVX512-BF16, the whole row goes to tunelab's kernel (`tunelab.kernels`,
`attention_bf16.cpp`: forward and backward, every example and head in one call, deterministic); elsewhere
(fp32, GPUs, dropout, odd head sizes, examples longer than `KERNEL_MAX_LEN`, or where the kernel does not
build) each example is one `scaled_dot_product_attention(is_causal=True)` call. `attention_backend()` says which.

It is registered as a transformers attention implementation (`AttentionInterface`) and switched on only
inside `packed_attention(model)`; generation and evaluation keep the model's own implementation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

NAME = "tunelab_varlen"
KERNEL_MAX_LEN = 8192  # the kernel keeps two fp32 score blocks of 64 x length per thread in cache
_registered = False
_kernel: dict[str, Any] = {}  # the autograd function, defined on first use


def attention_backend() -> str:
    """What packed bf16 attention runs on here: tunelab's kernel, or PyTorch's SDPA and why."""
    why = _kernel_why_not()
    return "tunelab bf16 kernel" if why is None else f"PyTorch scaled_dot_product_attention ({why})"


def _kernel_why_not() -> str | None:
    from tunelab import kernels  # which builds and self-tests the kernel once, and remembers the outcome

    return kernels.attention_why_not()


def _kernel_function() -> Any:
    """The kernel as an autograd function (defined on first use: this module imports torch lazily)."""
    if "fn" not in _kernel:
        import torch

        class PackedAttention(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, q: Any, k: Any, v: Any, cu: list[int], scale: float) -> Any:
                q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
                o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, scale)
                ctx.save_for_backward(q, k, v, o, lse)
                ctx.cu, ctx.scale = cu, scale
                return o

            @staticmethod
            def backward(ctx: Any, dout: Any) -> Any:
                q, k, v, o, lse = ctx.saved_tensors
                dq, dk, dv = torch.ops.tunelab.attention_bf16_backward(dout, q, k, v, o, lse, ctx.cu, ctx.scale)
                return dq, dk, dv, None, None

        _kernel["fn"] = PackedAttention
    return _kernel["fn"]


def _use_kernel(query: torch.Tensor, key: torch.Tensor, cu: list[int], p: float) -> bool:
    import torch

    bf16 = query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )
    d = query.shape[-1]
    return (
        bf16
        and p == 0.0
        and query.device.type == "cpu"
        and query.shape[0] == 1
        and d % 32 == 0
        and d <= 256
        and query.shape[1] % key.shape[1] == 0
        and len(cu) > 1
        and max(e - s for s, e in itertools.pairwise(cu)) <= KERNEL_MAX_LEN
        and _kernel_why_not() is None
    )


def varlen_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, H, T, D], key/value [1, Hkv, T, D] → output [1, T, H, D] (the transformers convention).
    Positions past the last boundary (filler) get a zero output."""
    import torch
    import torch.nn.functional as F

    cu = kwargs.get("cu_seqlens_tunelab")
    if cu is None:
        raise RuntimeError("packed attention needs cu_seqlens_tunelab (use tunelab.train.packing.pack)")
    if not isinstance(cu, list):  # a tensor, so that a compiled layer does not specialise on the boundaries
        cu = cu.tolist()
    p = dropout if module.training else 0.0
    if _use_kernel(query, key, cu, p):
        import torch

        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        q, k, v = (x[0].to(torch.bfloat16) for x in (query, key, value))
        return _kernel_function().apply(q, k, v, cu, float(scale))[None], None
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(
            query[:, :, s:e],
            key[:, :, s:e],
            value[:, :, s:e],
            is_causal=True,
            scale=scaling,
            dropout_p=p,
            enable_gqa=gqa,
        )
        for s, e in itertools.pairwise(cu)
    ]
    if cu[-1] < query.shape[2]:  # filler after the last span (`pack`'s row rounding): no attention, zeros
        outs.append(query.new_zeros((*query.shape[:2], query.shape[2] - cu[-1], value.shape[-1])))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    global _registered
    if not _registered:
        import torch
        from transformers import AttentionInterface

        # A Python loop over example boundaries: kept out of torch.compile graphs (a graph break, not a recompile).
        AttentionInterface.register(NAME, torch.compiler.disable(varlen_attention))
        _registered = True


def _configs(model: Any) -> Iterator[Any]:
    seen: set[int] = set()
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and id(c) not in seen and hasattr(c, "_attn_implementation"):
            seen.add(id(c))
            yield c


def supports_packing(model: Any) -> bool:
    """Models whose attention goes through the transformers attention interface and rotary position ids."""
    return bool(getattr(model, "_supports_attention_backend", False))


@contextmanager
def packed_attention(model: Any) -> Iterator[None]:
    """Switch every attention layer of `model` to `varlen_attention`, restoring the old choice after."""
    register()
    saved = [(c, c._attn_implementation) for c in _configs(model)]
    try:
        for c, _ in saved:
            c._attn_implementation = NAME
        yield
    finally:
        for c, impl in saved:
            c._attn_implementation = impl
