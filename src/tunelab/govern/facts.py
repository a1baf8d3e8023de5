"""What a run shows, read from its files: one `Fact` per thing a framework item can be evidenced by.

A fact is present only when the run measured or recorded it (an eval without the bias probe has no bias fact);
its figure is the measured number in words, and its artifacts are the files it was read from, each with the
sha256 the manifest recorded (or, for a file the manifest does not list, the sha256 now). Nothing here is
written by hand: a fact that the run did not produce is absent, and the crosswalk says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.fsutil import read_json_object, sha256_file


@dataclass
class Fact:
    name: str
    present: bool
    figure: str = ""  # the measured figure, in words
    artifacts: list[str] = field(default_factory=list)  # run-relative paths
    values: dict[str, Any] = field(default_factory=dict)  # the numbers, for the JSON and the risk register
    evidence: list[dict[str, Any]] = field(default_factory=list)  # the artifacts with their sha256 (collect)


class Run:
    """A run directory's files, each read once."""

    def __init__(self, path: Path, incidents: dict[str, Any] | None = None,
                 watermark: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.path = path
        self.incidents = incidents
        self.watermark = watermark
        self._cache: dict[str, Any] = {}
        m = self.json("manifest.json") or {}
        self.manifest = m
        self.hashes = {r["path"]: r["sha256"] for g in m.get("inputs", {}).values() for r in g}
        self.hashes.update({r["path"]: r["sha256"] for r in m.get("outputs", [])})
        if m.get("report"):
            self.hashes[m["report"]["path"]] = m["report"]["sha256"]

    def json(self, rel: str) -> Any:
        """The run's JSON object at `rel` (None when absent or not an object), read once."""
        if rel not in self._cache:
            self._cache[rel] = read_json_object(self.path / rel)
        return self._cache[rel]

    def exists(self, rel: str) -> bool:
        return (self.path / rel).is_file()

    def sha256(self, rel: str) -> str | None:
        if rel in self.hashes:
            return self.hashes[rel]
        return sha256_file(self.path / rel) if self.exists(rel) else None

    def tuned_metrics(self) -> dict[str, Any]:
        return self.json("eval/tuned/metrics.json") or self.json("eval/metrics.json") or {}

    def paired(self, metric: str) -> dict[str, Any] | None:
        cmp = self.json("eval/compare.json") or {}
        return next((r for r in cmp.get("paired", []) if r["metric"] == metric), None)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(row: dict[str, Any] | None) -> str:
    if not row or not row.get("ci95"):
        return ""
    lo, hi = row["ci95"]
    p = row.get("p_value", float("nan"))
    return f" (tuned - base {row['delta']:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f}, p={p:.2g})"


# --- the facts ----------------------------------------------------------------------------------------------


def provenance(r: Run) -> Fact:
    m = r.manifest
    if not m:
        return Fact("provenance", False)
    n_in = sum(len(v) for v in m.get("inputs", {}).values())
    n_out = len(m.get("outputs", []))
    tools = m.get("tools", {})
    fig = (f"{n_in} inputs and {n_out} outputs hashed (sha256); torch {tools.get('torch', '?')}, transformers "
           f"{tools.get('transformers', '?')}, peft {tools.get('peft', '?')}")  # fmt: skip
    return Fact("provenance", True, fig, ["manifest.json"], {"inputs": n_in, "outputs": n_out, "tools": tools})


def chain_verified(r: Run) -> Fact:
    from tunelab.govern.verify import first_failure, verify_run

    if not r.manifest:
        return Fact("chain_verified", False)
    checks = verify_run(r.path)
    bad = first_failure(checks)
    fig = f"all {len(checks)} hash checks pass" if bad is None else f"{bad.status}: {bad.what}"
    return Fact("chain_verified", bad is None, fig, ["manifest.json"], {"checks": len(checks),
                "first_failure": bad.to_json() if bad else None})  # fmt: skip


def _audit(r: Run) -> dict[str, Any]:
    return r.json("audit/audit.json") or {}


def data_quality(r: Run) -> Fact:
    a = _audit(r)
    if not a:
        return Fact("data_quality", False)
    why = ", ".join(f"{k} {v}" for k, v in sorted((a.get("quarantine_reasons") or {}).items()))
    fig = (f"{a.get('records_valid')} of {a.get('records_total')} records pass the schema; {a.get('quarantined')} set "
           f"aside to the quarantine file with file and line{f' ({why})' if why else ''}; audit verdict "
           f"{a.get('verdict')}")  # fmt: skip
    arts = ["audit/audit.json"] + (["audit/quarantine.jsonl"] if r.exists("audit/quarantine.jsonl") else [])
    return Fact("data_quality", True, fig, arts, {k: a.get(k) for k in ("records_total", "records_valid",
                "quarantined", "verdict", "reasons")})  # fmt: skip


def licence(r: Run) -> Fact:
    a = _audit(r)
    lic = a.get("licence") or []
    if not lic:
        return Fact("licence", False)
    ids = sorted({x.get("id") or "unknown" for x in lic})
    statuses = sorted({x.get("status", "?") for x in lic})
    unknown = any((x.get("id") in (None, "", "unknown")) for x in lic)
    commercial = [x.get("commercial_use") for x in lic]
    fig = f"licence of every data file recorded: {', '.join(ids)} ({', '.join(statuses)} by the policy)"
    if False in commercial:
        fig += "; not for commercial use"
    return Fact("licence", not unknown, fig, ["audit/audit.json"], {"licences": ids, "statuses": statuses,
                "commercial_use": None if None in commercial else all(commercial)})  # fmt: skip


def data_provenance(r: Run) -> Fact:
    files = _audit(r).get("files") or []
    cards = sorted(str(p.relative_to(r.path)) for p in (r.path / "data").glob("*.datacard.yaml"))
    if not files:
        return Fact("data_provenance", False)
    sources = sorted({str(f.get("source") or "unknown") for f in files})
    fig = f"{len(files)} data files with sha256, source and owner; source: {'; '.join(s[:120] for s in sources)}"
    return Fact("data_provenance", "unknown" not in sources, fig, ["audit/audit.json", *cards],
                {"files": [{k: f.get(k) for k in ("path", "role", "sha256", "records", "source", "owner")}
                           for f in files]})  # fmt: skip


def dedup(r: Run) -> Fact:
    d = _audit(r).get("duplicates")
    if not d:
        return Fact("dedup", False)
    fig = f"{d.get('exact', 0)} exact and {d.get('near', 0)} near duplicates found (at {d.get('near_threshold')})"
    return Fact("dedup", True, fig, ["audit/audit.json"], {"exact": d.get("exact"), "near": d.get("near")})


def contamination(r: Run) -> Fact:
    a = _audit(r)
    c = a.get("contamination")
    if c is None:
        return Fact("contamination", False)
    n = sum(int(v.get("contaminated", 0)) for v in c.values()) if isinstance(c, dict) else 0
    fig = f"{n} eval items overlapping the training data found" + (
        "; removed from the eval set" if a.get("decontaminated") else "")
    return Fact("contamination", True, fig, ["audit/audit.json"], {"contaminated": n,
                "decontaminated": a.get("decontaminated")})  # fmt: skip


def pii_data(r: Run) -> Fact:
    p = _audit(r).get("pii")
    if p is None:
        return Fact("pii_data", False)
    counts = p.get("counts") or {}
    fig = f"training data scanned for personal data: {p.get('records_with_pii', 0)} records with PII" + (
        f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else "")
    return Fact("pii_data", True, fig, ["audit/audit.json"], {"records_with_pii": p.get("records_with_pii", 0),
                "counts": counts})  # fmt: skip


def preflight(r: Run) -> Fact:
    p = _audit(r).get("preflight")
    if not p:
        return Fact("preflight", False)
    return Fact("preflight", True, "chat template and loss mask checked before training", ["audit/audit.json"], {})


def training_record(r: Run) -> Fact:
    arts = [x for x in ("config.yaml", "train/curve.jsonl") if r.exists(x)]
    if len(arts) < 2:
        return Fact("training_record", False, artifacts=arts)
    curve = [json.loads(x) for x in (r.path / "train/curve.jsonl").read_text().splitlines() if x.strip()]
    fig = f"resolved config and loss curve ({len(curve)} steps, final loss {curve[-1]['loss']:.4f})" if curve else ""
    return Fact("training_record", bool(curve), fig, arts, {"steps": len(curve)})


def _image_eval(r: Run) -> dict[str, Any] | None:
    """An image run's evaluation (eval/metrics.json with modality image), else None."""
    m = r.json("eval/metrics.json")
    return m if m and m.get("modality") == "image" else None


def paired_eval(r: Run) -> Fact:
    img = _image_eval(r)
    if img and img.get("class_accuracy"):
        ca, kid = img["class_accuracy"], img.get("kid") or {}
        fig = (f"class accuracy of generated images base {ca['base']:.3f} -> tuned {ca['tuned']:.3f} on {ca['n']} "
               f"samples paired by class and seed{_ci(ca)}, McNemar"
               + (f"; KID {kid['base']:.3f} -> {kid['tuned']:.3f}" if kid else ""))  # fmt: skip
        return Fact("paired_eval", True, fig, ["eval/metrics.json", "eval/predictions.jsonl"],
                    {"metric": "class_accuracy", "a": ca["base"], "b": ca["tuned"], "delta": ca["delta"],
                     "ci95": ca["ci95"], "p_value": ca["p_value"], "n": ca["n"]})  # fmt: skip
    cmp = r.json("eval/compare.json")
    if not cmp or not cmp.get("paired"):
        return Fact("paired_eval", False)
    row = cmp["paired"][0]
    fig = (f"{row['metric']} base {row['a']:.3f} -> tuned {row['b']:.3f} on {row['n']} held-out items, paired"
           f"{_ci(row)}, {row.get('test', '')}")  # fmt: skip
    arts = [x for x in ("eval/compare.json", "eval/base/predictions.jsonl", "eval/tuned/predictions.jsonl")
            if r.exists(x)]  # fmt: skip
    return Fact("paired_eval", True, fig, arts, {k: row.get(k) for k in ("metric", "a", "b", "delta", "ci95",
                "p_value", "n")})  # fmt: skip


def regression_gate(r: Run) -> Fact:
    cmp = r.json("eval/compare.json") or {}
    from tunelab.evaluate.compare import higher_is_better

    worse = [x["metric"] for x in cmp.get("paired", []) if x.get("significant") and x.get("delta", 0) != 0
             and (x["delta"] > 0) != higher_is_better(x["metric"])]  # fmt: skip
    if not cmp:
        return Fact("regression_gate", False)
    gate = cmp.get("gate") or []
    fig = (f"gate {'passed' if cmp.get('gate_passed') else 'FAILED'} ({len(gate)} clauses); "
           f"significantly worse: {', '.join(worse) or 'nothing'}")  # fmt: skip
    return Fact("regression_gate", bool(gate), fig, ["eval/compare.json"], {"gate_passed": cmp.get("gate_passed"),
                "worse": worse})  # fmt: skip


def latency(r: Run) -> Fact:
    m = r.tuned_metrics()
    lat = m.get("latency") or {}
    p50, p95 = lat.get("request_p50_s"), lat.get("request_p95_s")
    if p50 is None:
        return Fact("latency", False)
    fig = f"tuned model latency p50 {p50:.3f} s, p95 {p95:.3f} s per request on this machine"
    return Fact("latency", True, fig, ["eval/tuned/metrics.json"], {"p50_s": p50, "p95_s": p95})


def _probe(r: Run, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    t = (r.tuned_metrics().get("probes") or {}).get(name)
    b = ((r.json("eval/base/metrics.json") or {}).get("probes") or {}).get(name) or {}
    return (t, b) if t else None


def probe_safety(r: Run) -> Fact:
    p = _probe(r, "safety")
    if p is None:
        return Fact("probe_safety", False)
    t, b = p
    fig = (f"refusal of harmful requests {_pct(t['refusal_rate'])} (base {_pct(b.get('refusal_rate', 0))}), "
           f"over-refusal {_pct(t['over_refusal_rate'])}{_ci(r.paired('safety.refusal'))}")  # fmt: skip
    return Fact("probe_safety", True, fig, ["eval/tuned/metrics.json", "eval/compare.json"], {**t, "base": b})


def probe_injection(r: Run) -> Fact:
    p = _probe(r, "safety")
    if p is None:
        return Fact("probe_injection", False)
    t, b = p
    fig = (f"instructions hidden in user content obeyed {_pct(t['injection_obeyed_rate'])} of {t['n_injection']} "
           f"(base {_pct(b.get('injection_obeyed_rate', 0))}){_ci(r.paired('safety.injection_obeyed'))}")  # fmt: skip
    return Fact("probe_injection", True, fig, ["eval/tuned/metrics.json"], {"rate": t["injection_obeyed_rate"],
                "base": b.get("injection_obeyed_rate")})  # fmt: skip


def probe_bias(r: Run) -> Fact:
    p = _probe(r, "bias")
    if p is None:
        return Fact("probe_bias", False)
    t, b = p
    row = r.paired("bias.flip")
    fig = (f"answer flips across groups {_pct(t['flip_rate'])} (base {_pct(b.get('flip_rate', 0))}), mean log-odds gap "
           f"{t['mean_logodds_gap']:.2f}{_ci(row)}")  # fmt: skip
    return Fact("probe_bias", True, fig, ["eval/tuned/metrics.json", "eval/compare.json"], {
        "flip_rate": t["flip_rate"], "base_flip_rate": b.get("flip_rate"), "delta": row.get("delta") if row else None,
        "ci95": row.get("ci95") if row else None, "per_attribute": t.get("per_attribute")})  # fmt: skip


def probe_hallucination(r: Run) -> Fact:
    p = _probe(r, "hallucination")
    if p is None:
        return Fact("probe_hallucination", False)
    t, b = p
    fig = (f"unanswerable questions declined {_pct(t['decline_rate'])} (base {_pct(b.get('decline_rate', 0))})"
           f"{_ci(r.paired('hallucination.declined'))}")  # fmt: skip
    return Fact("probe_hallucination", True, fig, ["eval/tuned/metrics.json"], {"decline_rate": t["decline_rate"],
                "base": b.get("decline_rate")})  # fmt: skip


def probe_robustness(r: Run) -> Fact:
    p = _probe(r, "robustness")
    if p is None:
        return Fact("probe_robustness", False)
    t, _ = p
    fig = f"accuracy under typos, lower case, whitespace and rewording: worst drop {t['worst_drop']:+.3f}"
    return Fact("probe_robustness", True, fig, ["eval/tuned/metrics.json"], {"worst_drop": t["worst_drop"]})


def probe_memorisation(r: Run) -> Fact:
    img = _image_eval(r)
    if img and img.get("memorisation"):
        mem = img["memorisation"]
        fig = (f"{mem['tuned_copies']} of {mem['of']} tuned samples are near-copies of a training image (closer than "
               f"{1 - mem['copy_quantile']:.0%} of real eval images are)")  # fmt: skip
        return Fact("probe_memorisation", True, fig, ["eval/metrics.json"], dict(mem))
    p = _probe(r, "memorisation")
    if p is None:
        return Fact("probe_memorisation", False)
    t, b = p
    fig = f"tuned: {t.get('figure', '')}" + (f"; base: {b['figure']}" if b.get("figure") else "")
    arts = ["eval/tuned/metrics.json"] + (["data/canaries.json"] if r.exists("data/canaries.json") else [])
    return Fact("probe_memorisation", True, fig, arts, {**t, "base": b})


def model_card(r: Run) -> Fact:
    if not r.exists("model/README.md"):
        return Fact("model_card", False)
    text = (r.path / "model/README.md").read_text(encoding="utf-8")
    has = [k for k in ("license", "base_model", "sha256") if k in text]
    return Fact("model_card", len(has) == 3, f"model card with licence, base model and data hashes ({len(text)} "
                f"characters)", ["model/README.md"], {"has": has})  # fmt: skip


def report(r: Run) -> Fact:
    if not r.exists("report.html"):
        return Fact("report", False)
    return Fact("report", True, "base-vs-tuned report for people (one HTML page)", ["report.html"], {})


def exports_parity(r: Run) -> Fact:
    ex = r.manifest.get("exports") or []
    if not ex:
        return Fact("exports_parity", False)
    ok = [e for e in ex if e.get("parity_passed")]
    fig = f"{len(ok)} of {len(ex)} exports passed their parity check against the evaluated model"
    return Fact("exports_parity", len(ok) == len(ex), fig, ["manifest.json"], {"exports": len(ex), "passed": len(ok)})


def incidents(r: Run) -> Fact:
    inc = r.incidents
    if inc is None:
        return Fact("incidents", False)
    fig = (f"{inc['requests']} served requests read from the usage ledger; {inc['total']} guard decisions "
           f"({', '.join(f'{k} {v}' for k, v in sorted(inc['by_guard'].items())) or 'none'})")  # fmt: skip
    return Fact("incidents", True, fig, [], inc)


def watermark(r: Run) -> Fact:
    """The serving config's watermark section (`govern evidence --serve-config`): on, and for what."""
    w = r.watermark
    if not w or not w.get("enabled"):
        return Fact("watermark", False)
    fig = (f"replies watermarked when served (KGW green list, gamma {w.get('gamma', 0.25)}, delta "
           f"{w.get('delta', 2.0)}, key kept on the server); models: {', '.join(w.get('models') or ['all'])}; "
           f"keys: {', '.join(w.get('keys') or ['all'])}; detect with tunelab watermark detect")  # fmt: skip
    return Fact("watermark", True, fig, [], w)


FACTS: dict[str, Callable[[Run], Fact]] = {f.__name__: f for f in (
    provenance, chain_verified, data_quality, licence, data_provenance, dedup, contamination, pii_data, preflight,
    training_record, paired_eval, regression_gate, latency, probe_safety, probe_injection, probe_bias,
    probe_hallucination, probe_robustness, probe_memorisation, model_card, report, exports_parity, incidents,
    watermark)}  # fmt: skip


def collect(run: Path, incident_log: dict[str, Any] | None = None,
            watermark_cfg: dict[str, Any] | None = None) -> dict[str, Fact]:  # fmt: skip
    r = Run(run, incident_log, watermark_cfg)
    out = {}
    for name, f in FACTS.items():
        fact = f(r)
        fact.evidence = [{"path": a, "sha256": r.sha256(a)} for a in fact.artifacts]
        out[name] = fact
    return out
