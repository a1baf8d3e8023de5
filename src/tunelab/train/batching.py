"""Batches from encoded examples: right padding, labels IGNORE on padding and non-assistant tokens."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunelab.models.chat import IGNORE, Encoded

if TYPE_CHECKING:
    import torch


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: list[Encoded], pad_id: int) -> Batch:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return Batch(ids, mask, labels)


def batch_order(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless seeded epochs of shuffled indices, cut into batches (an epoch's tail joins the next)."""
    rng = random.Random(seed)
    buf: list[int] = []
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        buf.extend(perm)
        while len(buf) >= batch_size:
            yield buf[:batch_size]
            buf = buf[batch_size:]
