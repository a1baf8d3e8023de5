"""LoRA for a small UNet in training as one convolution (or matmul) per adapted layer, not three.

peft's `lora.Conv2d` computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: three convolutions, a multiply
and an add per layer, each over the whole feature map. With one vanilla adapter and no dropout the same value is
`conv(x, W + scaling * B A)`, where B A is the (out, in, k, k) product of the two small kernels (lora_B is 1x1). For
a UNet at 16x16 the step is bound by the number of operators, not their arithmetic, so one conv instead of three
is faster, though the weight gradient is then a full-size one and the merged weight is held for backward, so a
layer is merged only while its weight is no larger than its input (see docs/images.md for the measurement). The same
for `lora.Linear` (the attention projections). Anything else (dropout, several adapters, DoRA, merged, disabled)
goes through peft's own forward, checked at every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tunelab.train.fused import patch_forwards, plain_lora


def _fusable(m: Any) -> bool:
    import torch

    base = m.base_layer
    return plain_lora(m) and (
        (isinstance(base, torch.nn.Linear) and not getattr(m, "fan_in_fan_out", False))
        or (isinstance(base, torch.nn.Conv2d) and base.groups == 1 and base.padding_mode == "zeros")
    )


def _forward(m: Any, name: str, peft_forward: Callable[..., Any]) -> Callable[..., Any]:
    import torch
    import torch.nn.functional as F

    lora_a, lora_b, scaling, base = m.lora_A[name], m.lora_B[name], m.scaling[name], m.base_layer
    conv = isinstance(base, torch.nn.Conv2d)

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # the merged weight is kept for backward: worth it while it is no bigger than the input it replaces two
        # ops over (a small UNet's layers); a large layer on a small feature map takes peft's path
        if args or kwargs or m.disable_adapters or m.merged or base.weight.numel() > x.numel():
            out: torch.Tensor = peft_forward(x, *args, **kwargs)
            return out
        a = lora_a.weight.reshape(lora_a.weight.shape[0], -1)
        b = lora_b.weight.reshape(lora_b.weight.shape[0], -1)
        w = torch.addmm(base.weight.reshape(base.weight.shape[0], -1), b, a, alpha=scaling).view(base.weight.shape)
        if conv:
            return F.conv2d(x, w, base.bias, base.stride, base.padding, base.dilation, base.groups)
        return F.linear(x, w, base.bias)

    return forward


@contextmanager
def merged_lora(model: Any) -> Iterator[int]:
    """Within the block, fusable LoRA Linear/Conv2d layers of `model` run as one op. Yields how many."""
    from peft.tuners.lora import Conv2d as LoraConv2d
    from peft.tuners.lora import Linear as LoraLinear

    with patch_forwards(model, (LoraLinear, LoraConv2d), _fusable, _forward) as n:
        yield n
