"""Causal-LM loss computed only where it is taken: the vocabulary projection runs on the positions
whose next token is trained, never on the whole `tokens x vocab` matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.models.chat import IGNORE

if TYPE_CHECKING:
    import torch


def masked_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over trained tokens. `hidden` [B, T, H]; `labels` [B, T] (IGNORE elsewhere)."""
    import torch.nn.functional as F

    targets = labels[:, 1:]
    keep = targets != IGNORE
    n = int(keep.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logits = lm_head(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), targets[keep], reduction="mean"), n
