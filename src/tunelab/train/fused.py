"""A leaner LoRA forward for training: `base(x) + scaling * (x A^T) B^T` as one `addmm`.

peft's `lora.Linear` computes `result + lora_B(lora_A(dropout(x))) * scaling`: besides the matmuls that is a
multiply and an add over the whole `tokens x out_features` output, forward and backward, for every adapted
projection. With one vanilla adapter and no dropout the same value is `addmm(base(x), x A^T, B^T, alpha=
scaling)`: the scaling and the sum happen inside the matmul. The swap is done per module inside
`fused_lora(model)`; anything else (adapter disabled or merged, DoRA and other variants, dropout, several
adapters, extra arguments) goes through peft's own forward, checked at every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def plain_lora(m: Any) -> bool:
    """One active vanilla LoRA adapter: no DoRA or other variant, no LoRA bias, no dropout."""
    import torch

    adapters = list(getattr(m, "active_adapters", []))
    if len(adapters) != 1:
        return False
    name = adapters[0]
    return (
        name in m.lora_A
        and name not in getattr(m, "lora_variant", {})
        and not getattr(m, "use_dora", {}).get(name, False)
        and not getattr(m, "lora_bias", {}).get(name, False)
        and isinstance(m.lora_dropout[name], torch.nn.Identity)
    )


def _fusable(m: Any) -> bool:
    import torch

    return plain_lora(m) and isinstance(m.base_layer, torch.nn.Linear) and not getattr(m, "fan_in_fan_out", False)


def _forward(m: Any, name: str, peft_forward: Callable[..., Any]) -> Callable[..., Any]:
    import torch
    import torch.nn.functional as F

    lora_a, lora_b, scaling, base = m.lora_A[name], m.lora_B[name], m.scaling[name], m.base_layer

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Under autocast the matmuls take autocast's dtype whatever x's (frozen weights may be held in bf16).
        mixed = x.dtype != lora_a.weight.dtype and not torch.is_autocast_enabled(x.device.type)
        if args or kwargs or m.disable_adapters or m.merged or mixed:
            out: torch.Tensor = peft_forward(x, *args, **kwargs)
            return out
        result = F.linear(x, base.weight, base.bias)
        xa = F.linear(x, lora_a.weight)
        flat = torch.addmm(
            result.reshape(-1, result.shape[-1]), xa.reshape(-1, xa.shape[-1]), lora_b.weight.t(), alpha=scaling
        )
        return flat.view(result.shape)

    return forward


@contextmanager
def fused_lora(model: Any) -> Iterator[int]:
    """Within the block, fusable LoRA layers of `model` use the one-addmm forward. Yields how many."""
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError:
        yield 0
        return
    with patch_forwards(model, (LoraLinear,), _fusable, _forward) as n:
        yield n


@contextmanager
def patch_forwards(
    model: Any,
    kinds: tuple[type, ...],
    fusable: Callable[[Any], bool],
    make: Callable[[Any, str, Callable[..., Any]], Callable[..., Any]],
) -> Iterator[int]:
    """Within the block, each module of `kinds` that is `fusable` runs `make(module, adapter, peft_forward)`;
    the instance attribute is removed after, so peft's own forward is back. Yields how many were patched."""
    patched: list[Any] = []
    for mod in model.modules():
        if isinstance(mod, kinds) and fusable(mod):
            m: Any = mod
            m.forward = make(m, m.active_adapters[0], m.forward)
            patched.append(m)
    try:
        yield len(patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
