"""The merged LoRA forward for UNet training gives peft's outputs and gradients, and steps aside when it must."""

from __future__ import annotations

import torch

from tunelab.images.fused import merged_lora
from tunelab.images.unet import DEFAULT_TARGETS, add_lora, new_unet, small_unet_config


def _model(dropout: float = 0.0):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = add_lora(new_unet(small_unet_config(8, 1, 4, width=8)), 2, 4, dropout, list(DEFAULT_TARGETS))
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.1)  # B starts at zero: make the adapter count
    return m


def _run(m, merged: bool):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(3, 1, 8, 8, generator=g), torch.tensor([5, 500, 900]), torch.tensor([0, 1, 3])
    m.zero_grad()
    if merged:
        with merged_lora(m) as n:
            out = m(x, t, class_labels=y).sample
            assert n > 0
    else:
        out = m(x, t, class_labels=y).sample
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.requires_grad}


def test_merged_lora_matches_peft_in_value_and_gradient() -> None:
    m = _model()
    ref, gref = _run(m, merged=False)
    got, ggot = _run(m, merged=True)
    assert torch.allclose(ref, got, atol=1e-5)
    assert gref.keys() == ggot.keys()
    for k in gref:
        assert torch.allclose(gref[k], ggot[k], atol=1e-5, rtol=1e-4), k
    assert not any("forward" in mod.__dict__ for mod in m.modules())  # restored after the block


def test_merged_lora_leaves_dropout_to_peft() -> None:
    with merged_lora(_model(dropout=0.1)) as n:
        assert n == 0


def test_a_disabled_adapter_goes_through_peft() -> None:
    m = _model()
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([5, 900]), torch.tensor([0, 3])
    with torch.no_grad(), m.disable_adapter():
        base = m(x, t, class_labels=y).sample
        with merged_lora(m):
            merged = m(x, t, class_labels=y).sample
        adapted = m.base_model.model(x, t, class_labels=y).sample
    assert torch.equal(base, merged) and torch.equal(base, adapted)
