"""The risk register of a run: each risk of `risks.yaml` with its likelihood from what the run measured.

Likelihood is low, medium or high by the figure's thresholds, `unknown` when the run did not measure it (an
unmeasured risk is never reported as low). The level is the usual matrix of likelihood and impact. A few
measures are derived here from the facts (`derived`) where the figure is a count rather than a stored value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tunelab.govern.facts import Fact

LEVELS = ("low", "medium", "high")
MATRIX = {("low", "low"): "low", ("low", "medium"): "low", ("low", "high"): "medium",
          ("medium", "low"): "low", ("medium", "medium"): "medium", ("medium", "high"): "high",
          ("high", "low"): "medium", ("high", "medium"): "high", ("high", "high"): "high"}  # fmt: skip


def derived(facts: dict[str, Fact]) -> dict[str, tuple[float, str]]:
    """Figures the register needs that are counts over a fact's values: (value, the figure in words)."""
    f = facts
    out: dict[str, tuple[float, str]] = {}
    if f["paired_eval"].present:
        worse = f["regression_gate"].values.get("worse", [])
        out["regression_gate.worse_count"] = (len(worse), f"significantly worse than the base (paired, Holm): "
                                              f"{', '.join(worse) or 'nothing'}")  # fmt: skip
    c = f["contamination"]
    if c.present:
        left = 0 if c.values.get("decontaminated") else c.values.get("contaminated", 0)
        out["contamination.left_in_eval"] = (left, f"{c.figure}; {left} left in the eval set")
    lic = f["licence"]
    if lic.values:
        out["licence.restricted"] = (int(lic.values.get("commercial_use") is False or not lic.present), lic.figure)
    ch = f["chain_verified"]
    if ch.values:
        out["chain_verified.failures"] = (0 if ch.present else 1, ch.figure)
    return out


def _value(measure: str, facts: dict[str, Fact], extra: dict[str, tuple[float, str]]) -> tuple[float | None, str]:
    if measure in extra:
        return float(extra[measure][0]), extra[measure][1]
    name, _, key = measure.partition(".")
    fact = facts.get(name)
    if fact is None or not fact.present or key not in fact.values or fact.values[key] is None:
        return None, "not measured by this run"
    return float(fact.values[key]), fact.figure


def likelihood(value: float | None, thresholds: list[float], higher_is_worse: bool) -> str:
    if value is None:
        return "unknown"
    medium, high = thresholds
    if higher_is_worse:
        return "high" if value >= high else "medium" if value >= medium else "low"
    return "high" if value <= high else "medium" if value <= medium else "low"


def register(facts: dict[str, Fact], owner: str = "", path: Path | None = None) -> list[dict[str, Any]]:
    spec = yaml.safe_load((path or Path(__file__).with_name("risks.yaml")).read_text(encoding="utf-8"))
    extra = derived(facts)
    rows = []
    for r in spec["risks"]:
        value, measured = _value(r["measure"], facts, extra)
        like = likelihood(value, r["thresholds"], r.get("higher_is_worse", True))
        fact = facts.get(r["measure"].split(".", 1)[0])
        rows.append({
            "id": r["id"], "risk": r["risk"], "measure": r["measure"], "value": value,
            "measured": measured,
            "likelihood": like, "impact": r["impact"],
            "level": MATRIX[(like, r["impact"])] if like != "unknown" else "unknown",
            "mitigation": r["mitigation"], "owner": r.get("owner") or owner,
            "evidence": fact.evidence if fact is not None and value is not None else [],
        })  # fmt: skip
    return rows
