"""A plain-language verdict a non-specialist can act on, derived only from the measured numbers."""

from __future__ import annotations

from typing import Any

SIGNIFICANCE = 0.05


def verdict_text(summary: dict[str, Any]) -> str:
    base, tuned, comp = summary["base"], summary["tuned"], summary["comparison"]
    n = comp["n"]
    b_right, t_right = round(base["accuracy"] * n), round(tuned["accuracy"] * n)
    lo, hi = comp["ci95"]
    p = comp["p_value"]
    task = summary["task"]
    if p < SIGNIFICANCE and comp["delta"] > 0:
        head = (
            f"Fine-tuning helped. On {n} {task} examples the model never saw in training, the tuned model "
            f"answered {t_right} correctly, the original model {b_right} "
            f"(accuracy {base['accuracy']:.0%} → {tuned['accuracy']:.0%}). "
            f"A difference this large is very unlikely to be luck (p = {p:.2g}); the true gain is most likely "
            f"between {lo * 100:+.0f} and {hi * 100:+.0f} percentage points."
        )
    elif p < SIGNIFICANCE:
        head = (
            f"Fine-tuning made the model worse at {task}: {t_right} of {n} correct instead of {b_right} "
            f"(p = {p:.2g}). Do not ship this adapter."
        )
    else:
        head = (
            f"We cannot tell whether fine-tuning helped: {t_right} of {n} correct versus {b_right} before, and a "
            f"difference this size could be chance (p = {p:.2g}). Train longer or on more data, then compare again."
        )
    lost = comp.get("only_base_correct", 0)
    tail = []
    if lost:
        tail.append(
            f"It now gets {lost} example(s) wrong that the original model got right: read them under "
            "'Examples that flipped' before you rely on it."
        )
    if tuned.get("unparsed"):
        tail.append(f"{tuned['unparsed']} answer(s) named no valid label and were counted as wrong.")
    data = summary.get("data", {})
    if data.get("licence", "").startswith("LicenseRef-BBC"):
        tail.append("The training data may be used for non-commercial research only, and so may this model.")
    return " ".join([head, *tail])
