"""The lean decoder's layer loop, run as TorchScript.

A decoding step at batch 1 does little arithmetic per tensor call; driven from Python, the ~40 calls per
layer cost more than the arithmetic (profiled on SmolLM2-135M int8: 7.6 ms of a 22 ms step in the int8
matrix products, the rest in small operations and the interpreter between them). Scripted, the whole loop
is one call into TorchScript's interpreter. The same function also runs as plain Python (`LeanModel.scripted
= False`), which the tests compare.

Imported lazily (it imports torch at module level, as TorchScript needs its annotations resolved).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """RMSNorm in fp32 as transformers computes it (here cheaper than the fused `F.rms_norm` on a CPU)."""
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _lora(
    y: Tensor,
    x: Tensor,
    j: int,
    stride: int,
    rows: list[Tensor],
    every_row: list[bool],
    la: list[Tensor | None],
    lb: list[Tensor | None],
) -> Tensor:
    """y plus each adapter group's low-rank update (x A) B for fused module j, on the rows of that group."""
    for g in range(len(rows)):
        a = la[g * stride + j]
        bm = lb[g * stride + j]
        if a is not None and bm is not None:  # (TorchScript refines Optional types on `and`, not on `or`)
            if every_row[g]:  # noqa: SIM108
                y = y + (x @ a) @ bm
            else:
                y = y.index_add(0, rows[g], (x.index_select(0, rows[g]) @ a) @ bm)
    return y


def _linear(
    x: Tensor,
    j: int,
    w: list[Tensor],
    b: list[Tensor | None],
    p: list[torch.classes.quantized.LinearPackedParamsBase],  # type: ignore[name-defined]
    kw: list[Tensor],
    kn: list[int],
    small: int,
    fmt: str,
    reduce_range: bool,
    stride: int,
    rows: list[Tensor],
    every_row: list[bool],
    la: list[Tensor | None],
    lb: list[Tensor | None],
) -> Tensor:
    """Linear j in weight format `fmt` (fp32 | bf16 | fp16 | int8; see `lean.Linear`), plus the adapters'
    low-rank updates (`_lora`; none for empty lists). bf16 with `kw` (the weights packed for tunelab's kernel,
    `tunelab.kernels`, kn[j] outputs): products of up to `small` rows go to that kernel, bigger ones to oneDNN's
    copy in w."""
    if fmt == "bf16" and len(kw) > 0 and x.numel() <= small * x.shape[-1]:
        y = torch.ops.tunelab.linear_bf16(x, kw[j], b[j], kn[j])
    elif fmt == "bf16":  # w[j]: oneDNN-packed bf16; the bias (fp32) is added after the product comes back in fp32
        y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), w[j], None, "none", [], "").float()
        bj = b[j]
        if bj is not None:
            y = y + bj
    elif fmt == "int8" or fmt == "fp16":  # p[j]: fbgemm's packed int8 or fp16 weights (and the bias)
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).contiguous()
        if fmt == "fp16":
            y = torch.ops.quantized.linear_dynamic_fp16(flat, p[j])
        else:
            y = torch.ops.quantized.linear_dynamic(flat, p[j], reduce_range)
        y = y.view(list(shape[:-1]) + [y.shape[-1]])  # noqa: RUF005 (TorchScript has no starred lists)
    else:
        y = F.linear(x, w[j], b[j])
    return _lora(y, x, j, stride, rows, every_row, la, lb)


def layers(
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
    k: list[Tensor],
    v: list[Tensor],
    r0: int,
    start: int,
    rows: list[Tensor],
    every_row: list[bool],
    la: list[Tensor | None],
    lb: list[Tensor | None],
    ln1: list[Tensor],
    ln2: list[Tensor],
    eps1: list[float],
    eps2: list[float],
    inter: list[int],
    w: list[Tensor],
    b: list[Tensor | None],
    p: list[torch.classes.quantized.LinearPackedParamsBase],  # type: ignore[name-defined]
    kw: list[Tensor],
    kn: list[int],
    small: int,
    fmt: str,
    reduce_range: bool,
    hq: int,
    hk: int,
    d: int,
    scale: float,
) -> Tensor:
    """Every decoder layer on x [rows, s, hidden]; writes the rows' keys and values at columns start..start+s.

    Fused module j of layer i (qkv, o, gate-up, down) is linear 4i+j; adapter group g (the rows `rows[g]`, or
    all rows when `every_row[g]`) adds (x @ la[n+j']) @ lb[n+j'] with n = 4 * layers * g, j' = 4i+j, where an
    adapter's factors for a fused module are its modules' A side by side and their B block-diagonal.
    """
    n, s = x.shape[0], x.shape[1]
    half = d // 2
    end = start + s
    stride = 4 * len(ln1)
    # tunelab's bf16 kernel with the RMSNorm fused into its input (few rows, no adapter wanting the norm's output)
    fused = fmt == "bf16" and len(kw) > 0 and len(rows) == 0 and n * s <= small
    for i in range(len(ln1)):
        j = 4 * i
        if fused:  # tunelab's kernel does the RMSNorm as it rounds its input
            qkv = torch.ops.tunelab.linear_bf16(x, kw[j], b[j], kn[j], ln1[i], eps1[i])
        else:
            h = rms(x, ln1[i], eps1[i])
            qkv = _linear(h, j, w, b, p, kw, kn, small, fmt, reduce_range, stride, rows, every_row, la, lb)
        qkv = qkv.view(n, s, hq + 2 * hk, d)
        qk = qkv[:, :, : hq + hk]
        qk = torch.addcmul(qk * cos, qk.roll(half, -1), sin)  # rotate_half(t) * sin == roll(t) * (-sin, sin)
        kc, vc = k[i].narrow(0, r0, n), v[i].narrow(0, r0, n)
        kc.narrow(2, start, s).copy_(qk[:, :, hq:].transpose(1, 2))
        vc.narrow(2, start, s).copy_(qkv[:, :, hq + hk :].transpose(1, 2))
        a = F.scaled_dot_product_attention(
            qk[:, :, :hq].transpose(1, 2),
            kc.narrow(2, 0, end),
            vc.narrow(2, 0, end),
            attn_mask=mask,
            scale=scale,
            enable_gqa=hq != hk,
        )
        a = a.transpose(1, 2).reshape(n, s, hq * d)
        x = x + _linear(a, j + 1, w, b, p, kw, kn, small, fmt, reduce_range, stride, rows, every_row, la, lb)
        if fused:
            gu = torch.ops.tunelab.linear_bf16(x, kw[j + 2], b[j + 2], kn[j + 2], ln2[i], eps2[i])
        else:
            h = rms(x, ln2[i], eps2[i])
            gu = _linear(h, j + 2, w, b, p, kw, kn, small, fmt, reduce_range, stride, rows, every_row, la, lb)
        g, u = gu.split((inter[i], inter[i]), dim=-1)
        m = F.silu(g) * u
        x = x + _linear(m, j + 3, w, b, p, kw, kn, small, fmt, reduce_range, stride, rows, every_row, la, lb)
    return x


_SCRIPTED: Any = None


def scripted_layers() -> Any:
    """`layers`, compiled by TorchScript once per process (about a second)."""
    global _SCRIPTED
    if _SCRIPTED is None:
        import warnings

        from tunelab import kernels

        kernels.why_not()  # loads the bf16 kernel, or defines its operator's name, which `_linear` calls
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _SCRIPTED = torch.jit.script(layers)
    return _SCRIPTED
