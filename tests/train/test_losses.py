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


def test_chunked_cross_entropy_matches_plain_in_value_and_gradients() -> None:
    from tunelab.train.losses import chunked_cross_entropy

    torch.manual_seed(1)
    h1 = torch.randn(37, 16, requires_grad=True)
    w1 = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    h2 = h1.detach().clone().requires_grad_(True)
    w2 = w1.detach().clone().requires_grad_(True)
    ours = chunked_cross_entropy(h1, w1, t, chunk=8)  # 5 chunks, the last one short
    ref = F.cross_entropy(h2 @ w2.t(), t, reduction="sum")
    assert torch.allclose(ours, ref, atol=1e-4)
    (ours * 0.5).backward()
    (ref * 0.5).backward()
    assert h1.grad is not None and h2.grad is not None and w1.grad is not None and w2.grad is not None
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5)
    assert torch.allclose(w1.grad, w2.grad, atol=1e-5)


def test_chunked_cross_entropy_computes_no_weight_gradient_when_frozen() -> None:
    from tunelab.train.losses import chunked_cross_entropy

    h = torch.randn(5, 8, requires_grad=True)
    w = torch.randn(11, 8)
    loss = chunked_cross_entropy(h, w, torch.randint(0, 11, (5,)))
    loss.backward()
    assert h.grad is not None and w.grad is None


def test_weighted_chunked_cross_entropy_scales_each_row_in_value_and_gradients() -> None:
    from tunelab.train.losses import chunked_cross_entropy

    torch.manual_seed(2)
    h1 = torch.randn(21, 16, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    w = torch.randn(30, 16)
    t = torch.randint(0, 30, (21,))
    scale = torch.rand(21) * 3
    ours = chunked_cross_entropy(h1, w, t, chunk=8, scale=scale)
    ref = (F.cross_entropy(h2 @ w.t(), t, reduction="none") * scale).sum()
    assert torch.allclose(ours, ref, atol=1e-4)
    ours.backward()
    ref.backward()
    assert h1.grad is not None and h2.grad is not None
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5)
