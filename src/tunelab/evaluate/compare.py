"""`tunelab compare A B`: every metric of two eval runs on the same items, paired by id, with honest statistics.

- binary per-example scores (accuracy, pass@1, refusal...): McNemar exact test on the discordant pairs,
  paired-bootstrap CI of the change, and the discordant odds ratio as effect size;
- continuous per-example scores (rouge_l, nll...): paired sign-flip permutation test, paired-bootstrap CI,
  Cohen's d_z;
- Holm-adjusted p-values over all tested metrics, with a note when several are tested;
- run-level numbers (macro-F1, perplexity, latency percentiles): the change only (no per-example pairs);
- a gate: `accuracy>=+0.02, safety.refusal_rate>=-0.05, latency.ttft_p50_s<=0.5`. A signed number is a bound
  on the change B - A; an unsigned one a bound on B's value. Any failed clause → exit 1.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, DataError, GateFailed
from tunelab.evaluate.stats import cohens_dz, holm, mcnemar_exact, paired_bootstrap_ci, paired_permutation_p

_CLAUSE = re.compile(r"^\s*([A-Za-z0-9_.@\-]+)\s*(>=|<=|>|<)\s*([+-]?)(\d+(?:\.\d*)?|\.\d+)\s*$")
ALPHA = 0.05


@dataclass(frozen=True)
class Clause:
    metric: str
    op: str
    value: float
    on_delta: bool

    def text(self) -> str:
        v = f"{self.value:+g}" if self.on_delta else f"{self.value:g}"
        return f"{self.metric}{self.op}{v}"

    def holds(self, x: float) -> bool:
        return {">=": x >= self.value, "<=": x <= self.value, ">": x > self.value, "<": x < self.value}[self.op]


def parse_gate(text: str) -> list[Clause]:
    clauses = []
    for part in (p for p in text.split(",") if p.strip()):
        m = _CLAUSE.match(part)
        if not m:
            raise ConfigError(
                f"cannot read gate clause {part.strip()!r}: write METRIC OP NUMBER, e.g. accuracy>=+0.02 "
                "(signed: a bound on the change; unsigned: on the tuned value)",
                field="--gate",
            )
        name, op, sign, num = m.groups()
        value = float(num) * (-1 if sign == "-" else 1)
        clauses.append(Clause(name, op, value, on_delta=bool(sign)))
    if not clauses:
        raise ConfigError("empty gate", field="--gate")
    return clauses


def _rows(path: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON: {e.msg}", file=path, line=n) from None
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("scores"), dict):
                raise DataError("not a prediction row (needs id and scores)", file=path, line=n)
            if str(row["id"]) in out:
                raise DataError(f"duplicate id {row['id']!r}", file=path, line=n, field="id")
            out[str(row["id"])] = row
    return out


def load_run(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, dict[str, Any]]]]:
    """(metrics.json, {section: {id: row}}): section "" is the task, others the probe files."""
    if not (path / "metrics.json").is_file():
        raise DataError("not a finished eval directory (no metrics.json)", file=path)
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg}", file=path / "metrics.json") from None
    sections = {"": _rows(path / "predictions.jsonl")}
    for p in sorted((path / "probes").glob("*.jsonl")) if (path / "probes").is_dir() else []:
        sections[p.stem] = _rows(p)
    return metrics, sections


def _pair(
    section: str, a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], a_dir: Path, b_dir: Path
) -> list[str]:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        what = f"probe set {section!r}" if section else "predictions"
        ex = (only_a or only_b)[:3]
        raise DataError(
            f"the {what} do not cover the same items: {len(only_a)} ids only in {a_dir}, {len(only_b)} only in "
            f"{b_dir} (e.g. {', '.join(map(repr, ex))}); compare runs of the same eval data",
            field="id",
        )
    ids = sorted(a)
    for i in ids:
        ra, rb = a[i].get("reference"), b[i].get("reference")
        if ra != rb:
            raise DataError(
                f"item {i!r} has different references in the two runs ({ra!r} vs {rb!r})", field="reference"
            )
    return ids


# metrics where a smaller number is the better one (by their last name part); every other metric: larger is better
LOWER_IS_BETTER = frozenset({"over_refusal", "injection_obeyed", "flip", "gap", "unparsed", "perplexity", "loss",
                             # memorisation: what the model gives back of its training data
                             "exposure", "completed", "exact", "near", "similarity", "leaked", "ngram_overlap",
                             "nearest_cosine"})  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Which way is better for `metric` (latencies and the names in LOWER_IS_BETTER go down)."""
    last = metric.rsplit(".", 1)[-1]
    return not (metric.startswith("latency.") and "tokens_per_s" not in last) and last not in LOWER_IS_BETTER


def _is_binary(xs: list[float]) -> bool:
    return all(x in (0.0, 1.0) for x in xs)


def _paired(name: str, xa: list[float], xb: list[float], resamples: int, seed: int) -> dict[str, Any]:
    n = len(xa)
    ma, mb = sum(xa) / n, sum(xb) / n
    row: dict[str, Any] = {"metric": name, "a": ma, "b": mb, "delta": mb - ma, "n": n}
    row["ci95"] = list(paired_bootstrap_ci(xa, xb, resamples=resamples, seed=seed))
    if _is_binary(xa) and _is_binary(xb):
        only_a = sum(1 for x, y in zip(xa, xb, strict=True) if x > y)
        only_b = sum(1 for x, y in zip(xa, xb, strict=True) if y > x)
        row.update(
            test="McNemar exact",
            p_value=mcnemar_exact(only_a, only_b),
            only_a=only_a,
            only_b=only_b,
            effect_size={"odds_ratio": (only_b + 0.5) / (only_a + 0.5)},
        )
    else:
        row.update(
            test="paired permutation (sign flips)",
            p_value=paired_permutation_p(xa, xb, resamples=resamples, seed=seed),
            effect_size={"cohens_dz": cohens_dz(xa, xb)},
        )
    return row


def _run_level(m: dict[str, Any]) -> dict[str, float]:
    """Run-level numbers: the numeric entries of metrics.json's `metrics` and `latency`."""
    out: dict[str, float] = {}
    for k, v in (m.get("metrics") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "n":
            out[k] = float(v)
    for k, v in (m.get("latency") or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "samples":
            out[f"latency.{k}"] = float(v)
    for sec, vals in (m.get("probes") or {}).items():
        for k, v in (vals or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "n":
                out[f"{sec}.{k}"] = float(v)
    return out


def compare_runs(
    a_dir: Path, b_dir: Path, *, gate: str | None = None, resamples: int = 10_000, seed: int = 0, flips: int = 20
) -> dict[str, Any]:
    clauses = parse_gate(gate) if gate else []
    ma, sa = load_run(a_dir)
    mb, sb = load_run(b_dir)
    if set(sa) != set(sb):
        raise DataError(
            f"the runs hold different probe sets ({sorted(set(sa) ^ set(sb))}); run both with the same --probes",
            field="probes",
        )
    notes: list[str] = []
    da = [f["sha256"] for f in ma.get("data", {}).get("files", [])]
    db = [f["sha256"] for f in mb.get("data", {}).get("files", [])]
    if da and db and da != db:
        notes.append("the eval data files differ in sha256 (items were paired by id and reference)")
    paired: list[dict[str, Any]] = []
    flipped: dict[str, Any] = {}
    for section in sorted(sa):
        ids = _pair(section, sa[section], sb[section], a_dir, b_dir)
        # a metric is paired over the items that carry it on both sides (a probe section mixes item types)
        names = sorted({k for i in ids for k in sa[section][i]["scores"]})
        for name in names:
            have = [i for i in ids if name in sa[section][i]["scores"] and name in sb[section][i]["scores"]]
            if not have:
                continue
            xa = [float(sa[section][i]["scores"][name]) for i in have]
            xb = [float(sb[section][i]["scores"][name]) for i in have]
            full = f"{section}.{name}" if section and not name.startswith(section + ".") else name
            paired.append(_paired(full, xa, xb, resamples, seed))
        if section == "" and "accuracy" in names:
            flipped = _flips(ids, sa[""], sb[""], "accuracy", flips)
    if len(paired) > 1:
        for row, p in zip(paired, holm([r["p_value"] for r in paired]), strict=True):
            row["p_holm"] = p
        notes.append(
            f"{len(paired)} metrics were tested: read p_holm (Holm-adjusted, family-wise error {ALPHA:g}) "
            "before calling a single change significant"
        )
    for row in paired:
        row["significant"] = row.get("p_holm", row["p_value"]) < ALPHA
    ra, rb = _run_level(ma), _run_level(mb)
    paired_names = {r["metric"] for r in paired}
    run_level = [
        {"metric": k, "a": ra[k], "b": rb[k], "delta": rb[k] - ra[k]}
        for k in sorted(set(ra) & set(rb))
        if k not in paired_names
    ]
    values = {r["metric"]: r for r in paired + run_level}
    gate_rows = []
    for c in clauses:
        if c.metric not in values:
            raise ConfigError(
                f"gate metric {c.metric!r} is not in both runs (have: {', '.join(sorted(values))})", field="--gate"
            )
        r = values[c.metric]
        x = r["delta"] if c.on_delta else r["b"]
        gate_rows.append({"clause": c.text(), "value": x, "passed": c.holds(x)})
    result = {
        "a": str(a_dir),
        "b": str(b_dir),
        "a_model": ma.get("model", {}),
        "b_model": mb.get("model", {}),
        "n": len(sa[""]),
        "paired": paired,
        "run_level": run_level,
        "flips": flipped,
        "gate": gate_rows,
        "gate_passed": all(g["passed"] for g in gate_rows),
        "notes": notes,
        "resamples": resamples,
        "seed": seed,
    }
    return result


def _flips(
    ids: list[str], a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], metric: str, k: int
) -> dict[str, Any]:
    worse = [i for i in ids if a[i]["scores"][metric] > b[i]["scores"][metric]]
    better = [i for i in ids if a[i]["scores"][metric] < b[i]["scores"][metric]]

    def show(i: str) -> dict[str, Any]:
        return {
            "id": i,
            "input": str(a[i].get("input") or "")[:400],
            "reference": a[i].get("reference"),
            "a_output": a[i].get("output"),
            "b_output": b[i].get("output"),
        }

    return {
        "metric": metric,
        "right_to_wrong": len(worse),
        "wrong_to_right": len(better),
        "right_to_wrong_examples": [show(i) for i in worse[:k]],
        "wrong_to_right_examples": [show(i) for i in better[:k]],
    }


def check_gate(result: dict[str, Any]) -> None:
    failed = [g for g in result["gate"] if not g["passed"]]
    if failed:
        raise GateFailed(
            "regression gate failed: " + "; ".join(f"{g['clause']} (got {g['value']:+.4g})" for g in failed)
        )


def render_terminal(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    t = Table(title=f"B vs A on {r['n']} paired items   (A = {r['a']}, B = {r['b']})")
    for col in ("metric", "A", "B", "change", "95% CI", "p", "p (Holm)", "test"):
        t.add_column(col, justify="left" if col in ("metric", "test") else "right")
    for row in r["paired"]:
        lo, hi = row["ci95"]
        mark = "[bold]" if row["significant"] else ""
        t.add_row(
            f"{mark}{row['metric']}",
            f"{row['a']:.4g}",
            f"{row['b']:.4g}",
            f"{mark}{row['delta']:+.4g}",
            f"[{lo:+.3g}, {hi:+.3g}]",
            f"{row['p_value']:.2g}",
            f"{row.get('p_holm', row['p_value']):.2g}",
            row["test"],
        )
    for row in r["run_level"]:
        t.add_row(row["metric"], f"{row['a']:.4g}", f"{row['b']:.4g}", f"{row['delta']:+.4g}", "", "", "", "run level")
    c.print(t)
    f = r.get("flips") or {}
    if f:
        c.print(f"{f['metric']}: {f['wrong_to_right']} items went wrong → right, {f['right_to_wrong']} right → wrong")
    for n in r["notes"]:
        c.print(f"note: {n}", highlight=False)
    for g in r["gate"]:
        c.print(f"gate {g['clause']}: {'[green]pass[/]' if g['passed'] else '[red]FAIL[/]'} ({g['value']:+.4g})")
