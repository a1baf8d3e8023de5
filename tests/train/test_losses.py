from __future__ import annotations

import torch
import torch.nn.functional as F

from tunelab.models.chat import IGNORE
from tunelab.train.losses import masked_lm_loss


def test_masked_loss_equals_full_logits_cross_entropy() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    labels = torch.full((2, 7), IGNORE)
    labels[0, 4:6] = torch.tensor([3, 9])
    labels[1, 2] = 11
    loss, n = masked_lm_loss(hidden, head, labels)
    ref = F.cross_entropy(head(hidden)[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    assert n == 3
    assert torch.allclose(loss, ref, atol=1e-6)


def test_no_trained_token_gives_zero_loss_with_a_graph() -> None:
    hidden = torch.randn(1, 4, 8, requires_grad=True)
    loss, n = masked_lm_loss(hidden, torch.nn.Linear(8, 5), torch.full((1, 4), IGNORE))
    assert n == 0 and float(loss.detach()) == 0.0
    loss.backward()
