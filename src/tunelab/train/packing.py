"""Micro-batches for the training loop: examples packed back to back into one row, no padding.

Targets are shifted per example (the token each position must predict); the last position of every
example predicts nothing, so no loss ever crosses from one packed example into the next. A global batch
is cut into micro-batches of at most `max_tokens` tokens, in order, so memory is bounded by the token
budget and the arithmetic does not depend on how the batch was cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from tunelab.models.chat import IGNORE, Encoded

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass
class Packed:
    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T], restarting at 0 for each example
    targets: torch.Tensor  # [1, T]: the next token where it is trained, IGNORE elsewhere
    cu_seqlens: list[int]  # example boundaries: [0, len0, len0+len1, ...]

    @property
    def tokens(self) -> int:
        return self.cu_seqlens[-1]

    @property
    def n_trained(self) -> int:
        return int((self.targets != IGNORE).sum())


def shifted_targets(e: Encoded) -> list[int]:
    return [*e.labels[1:], IGNORE]


def pack(examples: list[Encoded]) -> Packed:
    import torch

    ids: list[int] = []
    pos: list[int] = []
    tgt: list[int] = []
    cu = [0]
    for e in examples:
        n = len(e.input_ids)
        ids.extend(e.input_ids)
        pos.extend(range(n))
        tgt.extend(shifted_targets(e))
        cu.append(cu[-1] + n)
    return Packed(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([pos], dtype=torch.long),
        targets=torch.tensor([tgt], dtype=torch.long),
        cu_seqlens=cu,
    )


def micro_batches(units: list[T], max_tokens: int, size: Callable[[T], int] | None = None) -> list[list[T]]:
    """Consecutive groups of at most `max_tokens` tokens (a unit longer than that goes alone). A unit is an
    example, or for DPO a (chosen, rejected) pair that must stay in one pass."""
    groups: list[list[T]] = []
    cur: list[T] = []
    used = 0
    for e in units:
        n = size(e) if size else len(e.input_ids)  # type: ignore[attr-defined]
        if cur and used + n > max_tokens:
            groups.append(cur)
            cur, used = [], 0
        cur.append(e)
        used += n
    if cur:
        groups.append(cur)
    return groups


def trained_count(e: Encoded) -> int:
    return sum(1 for t in e.labels[1:] if t != IGNORE)
