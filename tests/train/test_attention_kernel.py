"""Training's bf16 attention kernel (`kernels/attention_bf16.cpp`): as close to float64 as PyTorch's own bf16
attention, reproducible whatever the thread count, examples kept apart, and what packed bf16 training runs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import KERNELS_CAN_BUILD
from tunelab import kernels
from tunelab.train import attention

pytestmark = pytest.mark.skipif(not KERNELS_CAN_BUILD, reason="no AVX512-BF16, compiler or ninja here")


def _row(heads: int, kv: int, d: int, lens: list[int], filler: int = 3, seed: int = 0) -> tuple[Any, ...]:
    """q [H, T, D], k/v [Hkv, T, D] as views of [T, heads, D] memory (how a model's projections hand them over)."""
    gen = torch.Generator().manual_seed(seed)
    cu = [0, *itertools.accumulate(lens)]
    t = cu[-1] + filler
    q, k, v = (torch.randn(t, h, d, generator=gen).bfloat16().transpose(0, 1) for h in (heads, kv, kv))
    dout = torch.randn(t, heads, d, generator=gen).bfloat16()
    return q, k, v, dout, cu


def _sdpa_bf16(q: Any, k: Any, v: Any, cu: list[int], scale: float) -> Any:
    outs = [
        F.scaled_dot_product_attention(
            q[None, :, s:e], k[None, :, s:e], v[None, :, s:e], is_causal=True, scale=scale, enable_gqa=True
        )[0]
        for s, e in itertools.pairwise(cu)
    ]
    outs.append(q.new_zeros(q.shape[0], q.shape[1] - cu[-1], q.shape[2]))
    return torch.cat(outs, 1).transpose(0, 1)


def _err(got: Any, want: Any) -> float:
    want = want.detach()
    return float((got.detach().double() - want).abs().max()) / float(want.abs().max())


@pytest.mark.parametrize(
    ("heads", "kv", "d", "lens"),
    [
        (9, 3, 64, [300, 177, 40]),  # the default model's heads, bench-like lengths
        (4, 4, 32, [1, 2, 63, 64, 65]),  # no grouping; lengths at every block edge
        (8, 2, 128, [129, 31]),
        (2, 1, 64, [700]),  # keys over several score blocks
    ],
)
def test_forward_and_backward_are_as_close_to_float64_as_pytorch_bf16(
    heads: int, kv: int, d: int, lens: list[int]
) -> None:
    assert kernels.attention_why_not() is None
    q, k, v, dout, cu = _row(heads, kv, d, lens)
    scale = d**-0.5
    o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, scale)
    dq, dk, dv = torch.ops.tunelab.attention_bf16_backward(dout, q, k, v, o, lse, cu, scale)
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    ref = kernels.attention_reference(*exact, cu, scale)
    ref.backward(dout.double())
    theirs = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    sd = _sdpa_bf16(*theirs, cu, scale)
    sd.backward(dout)
    assert o.shape == (q.shape[1], heads, d) and o.dtype == torch.bfloat16 and o.is_contiguous()
    assert (dq.stride(), dk.stride(), dv.stride()) == (q.stride(), k.stride(), v.stride())  # laid out as inputs
    assert float(o[cu[-1] :].abs().max()) == 0.0  # the filler after the last example
    for name, got, pt, want in zip(
        ("output", "dq", "dk", "dv"),
        (o, dq, dk, dv),
        (sd, *(x.grad for x in theirs)),
        (ref, *(x.grad for x in exact)),
        strict=True,
    ):
        assert got.shape == want.shape, name
        # bf16 rounding of the results alone is 2^-9 relative; PyTorch's bf16 attention is the yardstick
        assert _err(got, want) <= max(1.5 * _err(pt, want), 6e-3), (name, _err(got, want), _err(pt, want))


def test_the_log_sum_exp_is_that_of_each_score_row() -> None:
    q, k, v, _, cu = _row(3, 1, 32, [5, 70], filler=0)
    _o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, 0.2)
    for s, e in itertools.pairwise(cu):
        sc = (q[:, s:e].double() @ k[:, s:e].double().transpose(1, 2)) * 0.2
        sc = sc.masked_fill(torch.ones(e - s, e - s, dtype=torch.bool).triu(1), float("-inf"))
        assert torch.allclose(lse[:, s:e].double(), sc.logsumexp(-1), atol=1e-4)


def test_an_example_is_computed_alike_whatever_is_packed_before_it() -> None:
    gen = torch.Generator().manual_seed(1)

    def mem(n: int, h: int) -> Any:  # [n, h, D] memory
        return torch.randn(n, h, 64, generator=gen).bfloat16()

    last = [mem(50, h) for h in (4, 2, 2, 4)]  # q, k, v, dout of the example both rows end with
    rows = []
    for first in (90, 120):
        parts = [torch.cat([mem(first, x.shape[1]), x]) for x in last]
        q, k, v = (x.transpose(0, 1) for x in parts[:3])
        cu = [0, first, first + 50]
        o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, 0.125)
        g = torch.ops.tunelab.attention_bf16_backward(parts[3], q, k, v, o, lse, cu, 0.125)
        rows.append((first, o, g))
    (a, oa, ga), (b, ob, gb) = rows
    assert torch.equal(oa[a:], ob[b:])
    for x, y in zip(ga, gb, strict=True):
        assert torch.equal(x[:, a:], y[:, b:])


def test_results_do_not_depend_on_the_number_of_threads() -> None:
    q, k, v, dout, cu = _row(9, 3, 64, [200, 130, 70, 9])
    before = torch.get_num_threads()
    got = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, 0.125)
            got.append((o, lse, *torch.ops.tunelab.attention_bf16_backward(dout, q, k, v, o, lse, cu, 0.125)))
    finally:
        torch.set_num_threads(before)
    for other in got[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got[0], other, strict=True))


def test_views_of_a_fused_projection_get_their_gradients() -> None:
    """q, k, v sliced out of one [T, (H + 2 Hkv) D] projection (models with a fused qkv matrix): not dense."""
    gen = torch.Generator().manual_seed(2)
    t, h, kv, d = 150, 4, 2, 32
    qkv = torch.randn(t, (h + 2 * kv) * d, generator=gen).bfloat16()
    q, k, v = (x.view(t, -1, d).transpose(0, 1) for x in qkv.split([h * d, kv * d, kv * d], dim=1))
    cu = [0, 100, 150]
    dout = torch.randn(t, h, d, generator=gen).bfloat16()
    o, lse = torch.ops.tunelab.attention_bf16(q, k, v, cu, d**-0.5)
    grads = torch.ops.tunelab.attention_bf16_backward(dout, q, k, v, o, lse, cu, d**-0.5)
    exact = [x.detach().double().requires_grad_() for x in (q, k, v)]
    kernels.attention_reference(*exact, cu, d**-0.5).backward(dout.double())
    for got, x in zip(grads, exact, strict=True):
        assert got.shape == x.shape and _err(got, x.grad) < 1e-2


def test_bad_shapes_are_refused_with_a_reason() -> None:
    q, k, v, _, cu = _row(4, 2, 64, [10])
    with pytest.raises(RuntimeError, match="head size"):
        torch.ops.tunelab.attention_bf16(q[..., :48], k[..., :48], v[..., :48], cu, 0.1)
    with pytest.raises(RuntimeError, match="multiple of key/value heads"):
        torch.ops.tunelab.attention_bf16(q[:3], k, v, cu, 0.1)
    with pytest.raises(RuntimeError, match="bf16"):
        torch.ops.tunelab.attention_bf16(q.float(), k, v, cu, 0.1)
    with pytest.raises(RuntimeError, match="boundaries"):
        torch.ops.tunelab.attention_bf16(q, k, v, [0, 10, q.shape[1] + 1], 0.1)


# --- inside training ---------------------------------------------------------------------------------------


def _llama(head_dim: int = 32) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=4 * head_dim,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(cfg)


def _packed_step(model: Any, monkeypatch: pytest.MonkeyPatch, why: str | None) -> tuple[float, dict[str, Any]]:
    from tunelab.models.chat import Encoded
    from tunelab.train.packing import pack

    monkeypatch.setattr(kernels, "attention_why_not", lambda: why)
    gen = torch.Generator().manual_seed(3)
    ex = [Encoded(torch.randint(1, 128, (n,), generator=gen).tolist(), [-100] * n) for n in (70, 33, 100)]
    p = pack(ex)
    labels = p.input_ids.clone()
    model.zero_grad()
    with attention.packed_attention(model), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=p.input_ids, position_ids=p.position_ids, cu_seqlens_tunelab=p.cu_seqlens)
        loss = F.cross_entropy(out.logits[0, :-1].float(), labels[0, 1:])
    loss.backward()
    return float(loss.detach()), {k: w.grad.clone() for k, w in model.named_parameters() if w.grad is not None}


def test_packed_bf16_training_runs_the_kernel_and_agrees_with_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _llama()
    calls = []
    real = attention._kernel_function()

    class Counting(real):  # type: ignore[misc, valid-type]
        @staticmethod
        def forward(ctx: Any, *args: Any) -> Any:
            calls.append(1)
            return real.forward(ctx, *args)

    monkeypatch.setitem(attention._kernel, "fn", Counting)
    loss_k, grads_k = _packed_step(model, monkeypatch, None)
    assert len(calls) == 2  # one call per layer for the whole packed row
    loss_p, grads_p = _packed_step(model, monkeypatch, "off for this comparison")
    assert len(calls) == 2
    assert loss_k == pytest.approx(loss_p, rel=2e-2)
    for name, g in grads_p.items():
        cos = F.cosine_similarity(grads_k[name].flatten().double(), g.flatten().double(), dim=0)
        assert cos > 0.99, (name, float(cos))


def test_fp32_and_long_examples_keep_pytorch_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.zeros(1, 4, 300, 32)
    k = torch.zeros(1, 2, 300, 32)
    monkeypatch.setattr(kernels, "attention_why_not", lambda: None)
    assert not attention._use_kernel(q, k, [0, 300], 0.0)  # fp32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention._use_kernel(q, k, [0, 300], 0.0)
        assert not attention._use_kernel(q, k, [0, 300], 0.1)  # dropout
        assert not attention._use_kernel(q[..., :16], k[..., :16], [0, 300], 0.0)  # head size
        monkeypatch.setattr(attention, "KERNEL_MAX_LEN", 299)
        assert not attention._use_kernel(q, k, [0, 300], 0.0)
    assert attention.attention_backend() == "tunelab bf16 kernel"
    monkeypatch.setattr(kernels, "attention_why_not", lambda: "turned off (TUNELAB_KERNELS=0)")
    assert "scaled_dot_product_attention (turned off" in attention.attention_backend()
