"""Attention over packed rows without padding and without crossing example boundaries.

A packed micro-batch is one row holding several examples back to back. `varlen_attention` runs causal
attention on each example's slice alone (boundaries from `cu_seqlens`), so no token attends across an
example and no padding or `T x T` mask is ever computed. Position ids restart at each example, so rotary
embeddings see the same positions as for the example alone.

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
_registered = False


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
    gqa = query.shape[1] != key.shape[1]
    p = dropout if module.training else 0.0
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
