"""`tunelab guard train`: fit the learned guard with tunelab's own training engine, calibrate it, measure it.

1. The corpus (`dataset.build`): each training text becomes one example, `Template.example`: the role's
   question, the text (a window of at most `window` tokens: the one holding the injected payload when there is
   one, else a seeded one), and the label token. Sources are capped at `per_source` texts each, so that the
   938 plain harmful questions or the 650 in-the-wild jailbreaks do not make up the whole corpus.
   With `readout: every` the label is also trained inside the text (`marks`): "no" at every token of a benign
   text and before a payload, "yes" from a payload's last token on. Those position labels weigh `marks_weight`
   together and the label after the text 1 (per-label loss weights in the engine), so every text counts about
   the same and the reply question's single label is not drowned.
2. The base: the default model cut after `layers` layers (`model.cut_base`), its output layer cut down to the
   label tokens' rows (`model.label_head`: the loss is a softmax over the answers, cheap at every position);
   a LoRA adapter on every linear layer, trained by `train.engine.train` (packing, bf16 where the CPU has it,
   seeded step plan, checkpoints).
3. An n-gram classifier (`injection_train.fit`) fitted on the same training texts.
4. Calibration on the `calib` split: Platt scaling of the raw score together with the phrase rules' score and
   the n-gram logit (`a + b * raw + c * rules + d * ngram`, so a rule hit raises the score and does not decide
   alone), then the lowest threshold whose FPR on calib's benign texts is at most `target_fpr` and on its hard
   benign texts at most `target_hard_fpr` with one standard error added (Wilson upper bound). Without that
   margin the rate on the ~100 calib hard texts set the threshold three texts from the top, and the test rate
   of guards trained with other seeds came out at 0.045 and 0.073.
5. The `test` split is scored once; the figures go into the manifest, never into a choice.

The same corpus, settings and seed give the same adapter up to float rounding in the thread count's
reductions, and the same decisions (`tests/guard/test_guard.py` trains twice on a small corpus and compares).
"""

from __future__ import annotations

import platform
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.evaluate.metrics import detection_rates, threshold_at_fpr, tpr_at_fpr
from tunelab.fsutil import atomic_dir, atomic_write_json, dir_digest
from tunelab.guard.dataset import GuardItem, build, corpus_sha256, licences, summary
from tunelab.guard.harm import CATEGORIES
from tunelab.guard.model import (
    NGRAM_FILE,
    NONE,
    QUESTIONS,
    WINDOW,
    LearnedGuard,
    Reading,
    Template,
    cut_base,
    label_head,
    span_around,
)
from tunelab.progress import Reporter
from tunelab.serve.injection_corpus import missing_carriers
from tunelab.serve.injection_model import WINDOW as NGRAM_WINDOW
from tunelab.serve.injection_model import InjectionModel
from tunelab.serve.injection_train import fit as fit_ngram


@dataclass
class GuardTrainSettings:
    layers: int = 3
    window: int = WINDOW
    stride: int = WINDOW  # windows side by side at inference (3/4 overlap cost 30% more time for no gain)
    r: int = 16
    alpha: int = 32
    lr: float = 5e-4
    steps: int = 1200
    batch: int = 16
    per_source: int = 400
    hard_repeat: int = 2  # the hand-written hard benign requests (few) are seen this many times per epoch
    target_fpr: float = 0.02
    target_hard_fpr: float = 0.03  # and at most this on calib's hard benign texts (the higher threshold wins),
    hard_margin_z: float = 1.0  # counting one standard error (Wilson) for their small number (~100 texts)
    moderation_fpr: float = 0.05  # the reply question's threshold: harmless replies flagged on calib
    ngram_steps: int = 300
    readout: str = "every"  # the label read after the text ("last") or also at each of its tokens ("every")
    marks_after: int = 2  # `readout: every`: positions from a payload's last token trained as "yes"
    marks_no: int = 0  # and this many positions of benign text (or before a payload) as "no" (0: all of them)
    marks_weight: float = 2.0  # their loss together, beside the label after the text (1): every text weighs
    # about the same, so the reply question's one label is not drowned by the injection texts' hundred
    seed: int = 0
    threads: int | None = None


def _payload_tokens(offsets: list[tuple[int, int]], span: tuple[int, int], n: int) -> tuple[int, int]:
    """The [first, last) tokens of a character span."""
    first = next((k for k, (_, e) in enumerate(offsets) if e > span[0]), 0)
    last = next((k for k, (s, _) in enumerate(offsets) if s >= span[1]), n)
    return first, max(last, first + 1)


def _crop(
    ids: list[int], payload: tuple[int, int] | None, item: GuardItem, window: int, rng: random.Random
) -> tuple[list[int], int]:
    """A window of at most `window` tokens (the one holding the payload's [first, last) tokens when there is
    one) and its start."""
    if len(ids) <= window:
        return ids, 0
    if payload is not None:
        first, last = payload
        lo, hi = max(0, last - window), min(first, len(ids) - window)
        start = rng.randint(lo, hi) if lo <= hi else first
    elif item.attack:
        start = 0  # a jailbreak's framing starts it
    else:
        start = rng.randint(0, len(ids) - window)
    return ids[start : start + window], start


def marks(
    item: GuardItem, n: int, payload: tuple[int, int] | None, whole: bool, s: GuardTrainSettings, rng: random.Random
) -> list[tuple[int, bool]]:
    """The positions of an n-token window where the label is also trained (`readout: every`): (position, attack
    so far). An injected payload at [first, last): yes from its last token for `s.marks_after` tokens, no at the
    positions before it; a benign text: no at its positions (all, or `s.marks_no` of them when set); a direct
    attack read whole: yes at its last token. Elsewhere (inside a payload, long after it) nothing is asked."""
    if s.readout != "every" or item.moderation:
        return []

    def some(k: int) -> list[int]:
        return list(range(k)) if not s.marks_no or k <= s.marks_no else sorted(rng.sample(range(k), s.marks_no))

    if not item.attack:
        return [(p, False) for p in some(n)]
    if payload is None:
        return [(n - 1, True)] if whole else []
    first, last = max(0, payload[0]), min(n, payload[1])
    if first >= n or last <= 0:
        return []
    before = some(first)
    return [(p, False) for p in before] + [(p, True) for p in range(last - 1, min(n, last - 1 + s.marks_after))]


def training_items(items: list[GuardItem], per_source: int, seed: int) -> list[GuardItem]:
    """The train split with each (source, role, class) capped at `per_source` texts (a seeded sample)."""
    groups: dict[tuple[str, str, bool], list[GuardItem]] = defaultdict(list)
    for it in items:
        if it.split == "train":
            groups[(it.source, it.role, it.attack)].append(it)
    rng = random.Random(seed)
    out: list[GuardItem] = []
    for key in sorted(groups):
        g = groups[key]
        out += g if len(g) <= per_source else rng.sample(g, per_source)
    return out


def encode(
    tok: Any, template: Template, items: list[GuardItem], s: GuardTrainSettings, rows: dict[int, int] | None = None
) -> list[Any]:
    """The training examples; `rows`: label token id -> output row, when the model has a `label_head`."""
    from tunelab.models.chat import IGNORE, Encoded

    rng = random.Random(s.seed)
    enc = tok([it.text for it in items], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for it, ids, offs in zip(items, enc["input_ids"], enc["offset_mapping"], strict=True):
        offsets = [(int(a), int(b)) for a, b in offs]
        payload = _payload_tokens(offsets, it.span, len(ids)) if it.span is not None else None
        content, start = _crop(list(ids), payload, it, s.window, rng)
        in_crop = (payload[0] - start, payload[1] - start) if payload is not None else None
        m = marks(it, len(content), in_crop, len(content) == len(ids), s, rng)
        x, y = template.example(it.role, content, it.attack, it.category, m)
        if rows is not None:
            y = [t if t == IGNORE else rows[t] for t in y]
        weights = None
        if m:  # the label after the text weighs 1, the position labels `marks_weight` together
            weights = [s.marks_weight / len(m)] * (len(y) - 1) + [1.0]
        out.append(Encoded(x, y, weights))
    return out


def fit_platt(
    raw: list[float], rules: list[float], labels: list[bool], ngram: list[float] | None = None
) -> dict[str, float]:
    """Logistic regression of the label on (raw, rules, ngram), each class weighing the same: {a, b, c, d}."""
    import torch

    ng = ngram if ngram is not None else [0.0] * len(raw)
    x = torch.tensor([[r, q, n] for r, q, n in zip(raw, rules, ng, strict=True)], dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.float64)
    pos = max(1.0, float(y.sum()))
    neg = max(1.0, float(len(y) - y.sum()))
    w = torch.where(y > 0, 0.5 / pos, 0.5 / neg)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = p[0] + x @ p[1:]
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none") * w).sum()
        loss = loss + 1e-4 * (p[1:] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    a, b, c, d = (float(v) for v in p.detach())
    return {"a": a, "b": b, "c": c, "d": d}


def reliability(probs: list[float], labels: list[bool], bins: int = 10) -> list[dict[str, Any]]:
    """Per probability bin: the mean predicted probability, the observed attack rate, the count."""
    rows = []
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        idx = [i for i, p in enumerate(probs) if lo <= p < hi or (k == bins - 1 and p == 1.0)]
        if idx:
            rows.append({
                "bin": f"{lo:.1f}-{hi:.1f}",
                "n": len(idx),
                "mean_predicted": sum(probs[i] for i in idx) / len(idx),
                "observed": sum(labels[i] for i in idx) / len(idx),
            })  # fmt: skip
    return rows


def ece(rows: list[dict[str, Any]]) -> float:
    """Expected calibration error over the reliability bins."""
    n = sum(r["n"] for r in rows)
    return sum(r["n"] * abs(r["mean_predicted"] - r["observed"]) for r in rows) / max(1, n)


def features(
    guard: LearnedGuard, items: list[GuardItem], readings: list[Reading] | None = None
) -> tuple[list[float], list[float], list[float]]:
    """(raw model scores, rules' scores, n-gram logits) of the items (`readings`: theirs, already read)."""
    f = guard.features([it.text for it in items], [it.role for it in items], readings=readings)
    return [x[0] for x in f], [x[1] for x in f], [x[2] for x in f]


def score_items(guard: LearnedGuard, items: list[GuardItem]) -> list[float]:
    """The calibrated probability for each item."""
    return [guard.probability(*f) for f in zip(*features(guard, items), strict=True)]


def goal_figures(items: list[GuardItem], probs: list[float], threshold: float) -> dict[str, Any]:
    """The issue's figures on one split: TPR at FPR <= 2% (threshold chosen on these scores, as the figure is
    defined) overall and on indirect injections, and at the given (serving) threshold the hard negatives' FPR."""
    y = [it.attack for it in items]
    at2 = tpr_at_fpr(probs, y, 0.02)
    ind = [i for i, it in enumerate(items) if it.indirect or not it.attack]
    ind_at2 = tpr_at_fpr([probs[i] for i in ind], [y[i] for i in ind], 0.02)
    fresh = [i for i, it in enumerate(items) if it.source.endswith(":fresh") or not it.attack]
    fresh_at2 = tpr_at_fpr([probs[i] for i in fresh], [y[i] for i in fresh], 0.02)
    hard = [probs[i] for i, it in enumerate(items) if it.hard_negative]
    served = detection_rates(probs, y, threshold)
    ind_served = detection_rates([probs[i] for i in ind], [y[i] for i in ind], threshold)
    return {
        "n": len(items),
        "attacks": sum(y),
        "indirect_attacks": sum(it.indirect for it in items),
        "hard_negatives": len(hard),
        "tpr_at_fpr2": at2["tpr"],
        "indirect_tpr_at_fpr2": ind_at2["tpr"],
        "hard_negative_fpr": sum(p >= threshold for p in hard) / max(1, len(hard)),
        # injections built from `indirect.FRESH`, written before the final training and scored once
        "fresh_indirect_tpr_at_fpr2": fresh_at2["tpr"],
        "at_serving_threshold": {**served, "indirect_tpr": ind_served["tpr"], "threshold": threshold},
    }


def location_figures(
    items: list[GuardItem], readings: list[Reading], probs: list[float], threshold: float, sample_chars: int = 160
) -> dict[str, Any]:
    """Where a decision points, on the flagged attacks whose payload is known (generated or pasted into a
    document): how often the sentence it shows (`span_around` the reading's point) overlaps the payload, and how
    much of the payload it holds; beside what a decision showed before, the text's first `sample_chars`."""
    flagged = [(it, r) for it, r, p in zip(items, readings, probs, strict=True)
               if it.attack and it.span is not None and p >= threshold]  # fmt: skip
    hit = head = 0
    cover: list[float] = []
    chars: list[int] = []
    pointed = 0
    for it, r in flagged:
        a, b = it.span or (0, 0)
        head += a < sample_chars
        if r.at is None:
            continue
        pointed += 1
        s, e = span_around(it.text, r.at)
        inter = max(0, min(e, b) - max(s, a))
        hit += inter > 0
        cover.append(inter / max(1, b - a))
        chars.append(e - s)
    n = max(1, len(flagged))
    return {
        "flagged_with_payload": len(flagged),
        "pointed": pointed,
        "span_overlaps_payload": hit / n,
        "payload_share_in_span": sum(cover) / max(1, len(cover)),
        "span_chars_median": sorted(chars)[len(chars) // 2] if chars else None,
        "text_start_overlaps_payload": head / n,
    }


def moderation_figures(guard: LearnedGuard, items: list[GuardItem], threshold: float) -> dict[str, Any]:
    """The reply question on labelled replies: harm detection at `threshold` (and its AUC), the category of the
    caught ones, and the phrase lexicons of `serve.guards` on the same replies."""
    from tunelab.evaluate.metrics import auc
    from tunelab.serve.guards import moderation

    probs = guard.moderate([it.text for it in items])
    harm = [1.0 - p[NONE] for p in probs]
    y = [it.attack for it in items]
    caught = [(it, p) for it, p, h in zip(items, probs, harm, strict=True) if it.attack and h >= threshold]
    right = sum(max(CATEGORIES, key=lambda c: p[c]) == it.category for it, p in caught)
    lex = [bool(moderation(it.text)) for it in items]
    recall: dict[str, dict[str, int]] = {}
    for it, h in zip(items, harm, strict=True):
        if it.attack:
            row = recall.setdefault(it.category, {"n": 0, "caught": 0})
            row["n"] += 1
            row["caught"] += h >= threshold
    return {
        "n": len(items),
        "harmful": sum(y),
        "auc": auc(harm, y),
        "learned": {**detection_rates(harm, y, threshold), "category_accuracy": right / max(1, len(caught))},
        "lexicons": detection_rates([float(v) for v in lex], y, 0.5),
        "by_category": dict(sorted(recall.items())),
    }


def by_source(items: list[GuardItem], probs: list[float], threshold: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for it, p in zip(items, probs, strict=True):
        row = out.setdefault(f"{it.source} [{it.role}] ({'attack' if it.attack else 'benign'})", {"n": 0, "flagged": 0})
        row["n"] += 1
        row["flagged"] += p >= threshold
    return dict(sorted(out.items()))


def train_guard(out: Path, settings: GuardTrainSettings | None = None, *, reporter: Reporter | None = None,
                items: list[GuardItem] | None = None, base: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train, calibrate and measure a guard; write it to `out` (adapter + guard.json) atomically. `items`
    (default: the full corpus) and `base` (default: the default model) are for tests."""
    from peft import PeftModel

    from tunelab.config import RunConfig
    from tunelab.models.loading import load_tokenizer, resolve_model
    from tunelab.train.engine import _write_adapter, train

    s = settings or GuardTrainSettings()
    rep = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    dropped: dict[str, int] = {}
    missing: list[str] = []
    if items is None:
        items, dropped = build()
        missing = missing_carriers()
        if missing:
            rep.info(f"note: README carriers not installed at their versions ({', '.join(missing)}): this corpus "
                     "is not the shipped guard's; install with `pip install -c constraints.txt` to rebuild that")
    resolved = resolve_model(base)
    tok = load_tokenizer(resolved.path)
    template = Template.of(tok, QUESTIONS)
    chosen = training_items(items, s.per_source, s.seed)
    chosen += [it for it in chosen if it.hard_negative and it.source.startswith("tunelab:")] * (s.hard_repeat - 1)
    model = cut_base(resolved.path, s.layers)
    examples = encode(tok, template, chosen, s, label_head(model, template))
    rep.info(f"guard corpus: {len(chosen)} training texts ({sum(it.attack for it in chosen)} attacks)")
    cfg = RunConfig.model_validate({
        "method": {"kind": "lora", "r": s.r, "alpha": s.alpha},
        "optimizer": {"lr": s.lr},
        "schedule": {"kind": "cosine", "warmup_steps": 20},
        "batch": {"size": s.batch, "max_tokens": 4096},
        "train": {"max_steps": s.steps, "seed": s.seed, "threads": s.threads},
    })  # fmt: skip
    res = train(model, examples, cfg, rep, pad_id=int(tok.pad_token_id or 0))
    rep.info("fitting the n-gram classifier on the same texts")
    w, bias = fit_ngram([it for it in chosen if not it.moderation], steps=s.ngram_steps)
    ngram = InjectionModel(w, bias, 0.5, NGRAM_WINDOW, {"trained_with": "tunelab.serve.injection_train.fit"})
    with atomic_dir(out) as tmp:
        _write_adapter(res.model, tmp)
        ngram.save(tmp / NGRAM_FILE)
        merged = PeftModel.from_pretrained(cut_base(resolved.path, s.layers), str(tmp)).merge_and_unload().eval()
        meta: dict[str, Any] = {
            "base": {"model": base or "default", "layers": s.layers, "weights_sha256": dir_digest(resolved.path)},
            "window": s.window,
            "stride": s.stride,
            "readout": s.readout,
            "questions": QUESTIONS,
            "calibration": {"a": 0.0, "b": 1.0, "c": 0.0},
            "threshold": 0.5,
        }
        guard = LearnedGuard(merged, tok, meta, ngram)
        calib = [it for it in items if it.split == "calib" and not it.moderation]
        test = [it for it in items if it.split == "test" and not it.moderation]
        feats_c = features(guard, calib)
        meta["calibration"] = fit_platt(*feats_c[:2], [it.attack for it in calib], feats_c[2])
        probs_c = [guard.probability(*f) for f in zip(*feats_c, strict=True)]
        hard_c = [i for i, it in enumerate(calib) if it.hard_negative]
        meta["threshold"] = max(
            threshold_at_fpr(probs_c, [it.attack for it in calib], s.target_fpr),
            threshold_at_fpr([probs_c[i] for i in hard_c], [False] * len(hard_c), s.target_hard_fpr, z=s.hard_margin_z)
            if hard_c
            else 0,
        )
        probs_t = score_items(guard, test)
        rel = reliability(probs_t, [it.attack for it in test])
        mod_c = [it for it in items if it.split == "calib" and it.moderation]
        mod_t = [it for it in items if it.split == "test" and it.moderation]
        if template.harms and mod_c:
            harm_c = [1.0 - p[NONE] for p in guard.moderate([it.text for it in mod_c])]
            meta["moderation"] = {
                "threshold": threshold_at_fpr(harm_c, [it.attack for it in mod_c], s.moderation_fpr),
                "categories": list(CATEGORIES),
            }
        meta["manifest"] = {
            "kind": f"default model cut after {s.layers} layers, LoRA r={s.r} on every linear layer, label-token "
            f"scoring (yes/no) read {'at every token and ' if s.readout == 'every' else ''}after the text, max "
            "over windows; a hashed word 1-2-gram logistic regression fitted on the same texts; Platt-calibrated "
            "together with the phrase rules' score",
            "settings": asdict(s),
            "trained_with": "tunelab.train.engine.train",
            "precision": res.precision,
            "final_loss": res.curve[-1]["loss"],
            "loss_by_tenth": _tenths([row["loss"] for row in res.curve]),
            "train_tokens_per_s": res.tokens_per_s,
            "examples": len(examples),
            "corpus": summary(items),
            "corpus_sha256": corpus_sha256(items),
            "licences": licences(),
            "near_duplicates_dropped_from_held_out": dropped,
            "readme_carriers_missing": missing,
            "python": platform.python_version(),
            "threshold": {"value": meta["threshold"], "chosen_by": f"calib split, benign FPR <= {s.target_fpr} "
                          f"and hard benign FPR <= {s.target_hard_fpr} ({s.hard_margin_z} standard error added, "
                          "Wilson)"},
            "calib": detection_rates(probs_c, [it.attack for it in calib], meta["threshold"]),
            "test": goal_figures(test, probs_t, meta["threshold"]),
            "test_by_source": by_source(test, probs_t, meta["threshold"]),
            "reliability_test": rel,
            "ece_test": ece(rel),
            "moderation_test": (
                moderation_figures(guard, mod_t, meta["moderation"]["threshold"]) if "moderation" in meta else None
            ),
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(tmp / "guard.json", meta)
    return meta


def _tenths(losses: list[float]) -> list[float]:
    """The mean training loss over each tenth of the steps: the curve, in short."""
    n = len(losses)
    parts = [losses[k * n // 10 : (k + 1) * n // 10] for k in range(10)]
    return [round(sum(p) / len(p), 4) for p in parts if p]


