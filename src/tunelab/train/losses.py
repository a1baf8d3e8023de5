"""Causal-LM loss computed only where it is taken, and a chunk at a time.

The vocabulary projection runs only on positions whose next token is trained, and `chunked_cross_entropy`
never holds more than `chunk x vocab` logits: each chunk's logits are made, turned into the gradient of
the loss with respect to the hidden states (and the output weights, when they train), and dropped. The
backward pass then only scales those gradients. This is the fused linear + cross-entropy idea (as in
Liger-Kernel), written in plain PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.models.chat import IGNORE

if TYPE_CHECKING:
    import torch

CHUNK = 1024


def _chunked_ce_fn() -> Any:
    import torch

    class ChunkedCE(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int, scale: Any
        ) -> Any:
            need_h = ctx.needs_input_grad[0]
            need_w = ctx.needs_input_grad[1]
            grad_h = torch.empty_like(hidden) if need_h else None
            grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s : s + chunk]
                t = targets[s : s + chunk]
                logits = (h @ weight.t()).float()
                lse = torch.logsumexp(logits, dim=-1)
                nll = lse - logits.gather(1, t[:, None]).squeeze(1)
                w = None if scale is None else scale[s : s + chunk].float()
                total += (nll if w is None else nll * w).sum()
                if need_h or need_w:
                    g = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                    g[torch.arange(len(t), device=g.device), t] -= 1.0
                    if w is not None:
                        g.mul_(w[:, None])
                    if grad_h is not None:
                        grad_h[s : s + chunk] = (g.to(weight.dtype) @ weight).to(hidden.dtype)
                    if grad_w is not None:
                        grad_w += g.t() @ h.float()
            ctx.save_for_backward(grad_h, grad_w)
            ctx.weight_dtype = weight.dtype
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> Any:
            grad_h, grad_w = ctx.saved_tensors
            gh = grad_h * grad_out if grad_h is not None else None
            gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
            return gh, gw, None, None, None

    return ChunkedCE


_FN: Any = None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk: int = CHUNK,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed cross-entropy of `hidden [n, H] @ weight[V, H].T` against `targets [n]`, each row's times
    `scale [n]` when given."""
    global _FN
    if _FN is None:
        _FN = _chunked_ce_fn()
    out: torch.Tensor = _FN.apply(hidden, weight, targets, chunk, scale)
    return out


def lm_loss_sum(
    hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """Summed loss over trained positions. `hidden` [..., T, H]; `targets` [..., T] already shifted;
    `weights` [..., T] (optional): each position's loss times its weight.

    A plain linear head takes the chunked path; any other head (bias, soft-capping) is applied as is.
    """
    import torch
    import torch.nn.functional as F

    keep = targets != IGNORE
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    h = hidden[keep]
    t = targets[keep]
    w = None if weights is None else weights[keep]
    if isinstance(lm_head, torch.nn.Linear) and lm_head.bias is None:
        return chunked_cross_entropy(h, lm_head.weight, t, scale=w), n
    nll = F.cross_entropy(lm_head(h).float(), t, reduction="none")
    return (nll if w is None else nll * w.float()).sum(), n


def masked_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over trained tokens of a padded batch. `hidden` [B, T, H]; `labels` [B, T] unshifted."""
    import torch

    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
    loss, n = lm_loss_sum(hidden, lm_head, targets)
    return loss / max(1, n), n
