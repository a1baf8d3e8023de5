"""`report.html`: one self-contained page, data → training → base vs tuned → risks, rebuilt from the files
of a run directory alone (so `tunelab report RUN_DIR` gives the same page later).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from tunelab.fsutil import atomic_write_text, read_jsonl
from tunelab.report.svg import grouped_bars, line_chart

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#1f2328}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.verdict{font-size:1.1em;padding:1em 1.2em;border-radius:8px;background:#f0f6ff;border-left:6px solid #2563eb}
.verdict.bad{background:#fff1f0;border-color:#dc2626}.verdict.unsure{background:#fffbea;border-color:#d97706}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top}th{background:#f6f8fa}.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#57606a;font-size:.9em}.cm td{text-align:center;min-width:3.2em}.flex{display:flex;gap:2em;
flex-wrap:wrap}.licence{padding:.8em 1em;background:#fff8e6;border:1px solid #f0c36d;border-radius:6px}
code{background:#f6f8fa;padding:0 .3em;border-radius:4px}.small{font-size:.85em}
"""


def _load(run_dir: Path, rel: str) -> Any:
    p = run_dir / rel
    if not p.is_file():
        return None
    if p.suffix == ".jsonl":
        return read_jsonl(p)
    if p.suffix in (".yaml", ".yml"):
        return yaml.safe_load(p.read_text())
    return json.loads(p.read_text())


def _f(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _confusion(cm: dict[str, dict[str, int]], title: str) -> str:
    cols = list(next(iter(cm.values())).keys()) if cm else []
    top = max((v for row in cm.values() for v in row.values()), default=1) or 1
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    rows = []
    for gold, row in cm.items():
        cells = []
        for c in cols:
            v = row[c]
            alpha = v / top
            color = f"rgba(37,99,235,{alpha:.2f})" if c == gold else f"rgba(220,38,38,{alpha:.2f})"
            fg = "#fff" if alpha > 0.55 else "#1f2328"
            cells.append(f'<td style="background:{color};color:{fg}">{v}</td>')
        rows.append(f"<tr><th>{escape(gold)}</th>{''.join(cells)}</tr>")
    return (
        f'<div><b>{escape(title)}</b><table class="cm"><tr><th class="small">true ↓ / predicted →</th>{head}</tr>'
        f"{''.join(rows)}</table></div>"
    )


def _flips(rows: list[dict[str, Any]], want_base: bool, limit: int = 15) -> str:
    picked = [r for r in rows if r["base"]["correct"] == want_base and r["tuned"]["correct"] != want_base]
    if not picked:
        return "<p class='muted'>None.</p>"
    out = ["<table><tr><th>id</th><th>input (start)</th><th>reference</th><th>base said</th><th>tuned said</th></tr>"]
    for r in picked[:limit]:
        text = r["input"][:220] + ("…" if len(r["input"]) > 220 else "")
        out.append(
            f"<tr><td class='small'>{escape(r['id'])}</td><td class='small'>{escape(text)}</td>"
            f"<td>{escape(r['reference'])}</td><td>{escape(r['base']['output'][:80])}</td>"
            f"<td>{escape(r['tuned']['output'][:80])}</td></tr>"
        )
    out.append("</table>")
    if len(picked) > limit:
        out.append(f"<p class='muted'>… and {len(picked) - limit} more in eval/predictions.jsonl.</p>")
    return "".join(out)


def _every_metric(cmp: dict[str, Any]) -> str:
    """Every paired metric (task and probes) with its CI, p and Holm-adjusted p; then run-level numbers."""
    rows = [
        "<h2>Every metric, paired</h2><table><tr><th>metric</th><th>base</th><th>tuned</th><th>change</th>"
        "<th>95% CI</th><th>p</th><th>p (Holm)</th><th>test</th></tr>"
    ]
    for r in cmp.get("paired", []):
        lo, hi = r["ci95"]
        b = "<b>" if r.get("significant") else ""
        rows.append(
            f"<tr><td>{b}{escape(r['metric'])}</td><td class='num'>{_f(r['a'])}</td><td class='num'>{_f(r['b'])}</td>"
            f"<td class='num'>{b}{r['delta']:+.3f}</td><td class='num'>[{lo:+.3f}, {hi:+.3f}]</td>"
            f"<td class='num'>{r['p_value']:.3g}</td><td class='num'>{r.get('p_holm', r['p_value']):.3g}</td>"
            f"<td>{escape(r['test'])} (n={r['n']})</td></tr>"
        )
    for r in cmp.get("run_level", []):
        rows.append(
            f"<tr><td>{escape(r['metric'])}</td><td class='num'>{_f(r['a'])}</td><td class='num'>{_f(r['b'])}</td>"
            f"<td class='num'>{r['delta']:+.3f}</td><td></td><td></td><td></td><td>run level</td></tr>"
        )
    rows.append("</table>")
    rows += [f"<p class='muted'>{escape(n)}</p>" for n in cmp.get("notes", [])]
    return "".join(rows)


def render_report(run_dir: Path, summary: dict[str, Any]) -> str:
    metrics = _load(run_dir, "eval/metrics.json") or {}
    preds = _load(run_dir, "eval/predictions.jsonl") or []
    curve = _load(run_dir, "train/curve.jsonl") or []
    audit = _load(run_dir, "audit/audit.json") or {}
    card = _load(run_dir, "data/train.jsonl.datacard.yaml") or {}
    manifest = _load(run_dir, "manifest.json") or {}
    base, tuned, comp = summary["base"], summary["tuned"], summary["comparison"]
    lo, hi = comp["ci95"]
    kind = "" if comp["p_value"] < 0.05 and comp["delta"] > 0 else ("bad" if comp["p_value"] < 0.05 else "unsure")
    labels = list(metrics.get("tuned", {}).get("per_class", {}).keys())

    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tunelab · {escape(summary['task'])}"
        f"</title><style>{CSS}</style></head><body>"
    ]
    parts.append(f"<h1>Did fine-tuning help? · {escape(summary['task'])}</h1>")
    parts.append(
        f"<p class='muted'>Base model {escape(summary['model']['base_model'])} · run "
        f"<code>{escape(summary['run_dir'])}</code> · total {summary['timings']['total_s']:.0f} s</p>"
    )
    parts.append(f"<div class='verdict {kind}'>{escape(summary['verdict'])}</div>")

    parts.append("<h2>Base vs tuned</h2><table><tr><th></th><th>base</th><th>tuned</th><th>change</th></tr>")
    for key, name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
        parts.append(
            f"<tr><td>{name}</td><td class='num'>{_f(base[key])}</td><td class='num'>{_f(tuned[key])}</td>"
            f"<td class='num'>{tuned[key] - base[key]:+.3f}</td></tr>"
        )
    for key, name in (("latency_p50_s", "latency p50 (s)"), ("latency_p95_s", "latency p95 (s)")):
        parts.append(
            f"<tr><td>{name}</td><td class='num'>{_f(base.get(key))}</td>"
            f"<td class='num'>{_f(tuned.get(key))}</td><td></td></tr>"
        )
    parts.append(
        f"<tr><td>answers with no valid label</td><td class='num'>{base['unparsed']}</td>"
        f"<td class='num'>{tuned['unparsed']}</td><td></td></tr></table>"
    )
    parts.append(
        f"<p>Paired on the same {comp['n']} held-out examples: tuned-only correct {comp['only_tuned_correct']}, "
        f"base-only correct {comp['only_base_correct']}. {escape(comp.get('test', 'McNemar exact'))} "
        f"p = {comp['p_value']:.3g}; accuracy change {comp['delta']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}] "
        f"({escape(comp.get('ci_method', 'paired bootstrap'))}). Latency: one request at a time, "
        f"{base.get('latency_samples', 0)} requests per model.</p>"
    )
    if metrics:
        parts.append(
            "<div class='flex'>"
            + _confusion(metrics["base"]["confusion"], "base")
            + _confusion(metrics["tuned"]["confusion"], "tuned")
            + "</div>"
        )
        parts.append(
            "<h3>F1 per class</h3>"
            + grouped_bars(
                labels,
                {
                    "base": [metrics["base"]["per_class"][c]["f1"] for c in labels],
                    "tuned": [metrics["tuned"]["per_class"][c]["f1"] for c in labels],
                },
            )
        )

    parts.append(memorisation_section(run_dir))
    full = _load(run_dir, "eval/compare.json")
    if full:
        parts.append(_every_metric(full))

    parts.append("<h2>Examples that flipped</h2><h3>Now right (base was wrong)</h3>" + _flips(preds, False))
    parts.append("<h3>Now wrong (base was right)</h3>" + _flips(preds, True))

    parts.append("<h2>Training</h2>")
    if curve:
        parts.append(
            line_chart(
                {"loss": [(r["step"], r["loss"]) for r in curve]},
                xlabel="optimizer step",
                ylabel="loss (assistant tokens)",
            )
        )
    tr = summary.get("train", {})
    parts.append(
        f"<p>{tr.get('steps')} steps of batch {tr.get('batch_size')} on {tr.get('records')} cleaned records; "
        f"{tr.get('tokens_per_s', 0):.0f} tokens/s; {tr.get('trainable_params', 0):,} trainable of "
        f"{tr.get('total_params', 0):,} parameters (LoRA); {summary['timings']['train_s']:.0f} s.</p>"
    )

    parts.append("<h2>Data and licence</h2>")
    lic = card.get("licence", {}) if isinstance(card, dict) else {}
    if lic:
        parts.append(
            f"<div class='licence'><b>Licence: {escape(str(lic.get('id')))}</b> — "
            f"{escape(str(lic.get('name', '')))}<br>{escape(str(lic.get('text', '')))}<br>"
            f"Source: {escape(str(card.get('source', '')))}. Status under this run's policy: "
            f"<b>{escape(summary.get('data', {}).get('licence_status', '?'))}</b>.</div>"
        )
    if audit:
        dup = audit.get("duplicates", {})
        cont = sum(c["contaminated"] for c in audit.get("contamination", {}).values())
        parts.append(
            f"<table><tr><td>records read</td><td class='num'>{audit['records_total']}</td></tr>"
            f"<tr><td>valid</td><td class='num'>{audit['records_valid']}</td></tr>"
            f"<tr><td>exact duplicates removed</td><td class='num'>{dup.get('exact', 0)}</td></tr>"
            f"<tr><td>eval items also in train</td><td class='num'>{cont}</td></tr>"
            f"<tr><td>quarantined (see audit/quarantine.jsonl)</td><td class='num'>{audit['quarantined']}</td></tr>"
            f"<tr><td>audit verdict</td><td>{escape(audit['verdict'])}</td></tr></table>"
        )
        if audit.get("labels"):
            parts.append(
                "<h3>Training labels</h3>"
                + grouped_bars(
                    list(audit["labels"]),
                    {"records": list(audit["labels"].values())},
                    vmax=max(audit["labels"].values()),
                )
            )
        if audit.get("warnings"):
            parts.append("<ul>" + "".join(f"<li>{escape(w)}</li>" for w in audit["warnings"]) + "</ul>")

    parts.append("<h2>Provenance</h2>")
    if manifest:
        rows = [
            f"<tr><td>{escape(k)}</td><td class='small'>{escape(e['path'])}</td><td class='small'><code>"
            f"{e['sha256'][:16]}…</code></td></tr>"
            for k, es in manifest.get("inputs", {}).items()
            for e in es
        ]
        parts.append("<table><tr><th>input</th><th>file</th><th>sha256</th></tr>" + "".join(rows) + "</table>")
        tools = ", ".join(f"{k} {v}" for k, v in manifest.get("tools", {}).items())
        parts.append(f"<p class='small muted'>{escape(tools)}</p>")
    parts.append(exports_table(manifest.get("exports") or []))
    parts.append(
        "<p class='small muted'>Generated by tunelab from the files in this run directory; "
        "<code>tunelab report RUN_DIR</code> rebuilds it.</p></body></html>"
    )
    return "".join(parts)


def memorisation_section(run_dir: Path) -> str:
    """The memorisation probe's figures, base and tuned (empty when the eval did not run it)."""
    sides = {side: ((_load(run_dir, f"eval/{side}/metrics.json") or {}).get("probes") or {}).get("memorisation")
             for side in ("base", "tuned")}  # fmt: skip
    if not sides["tuned"]:
        return ""
    out = ["<h2>Does it give back its training data?</h2><table><tr><th>model</th><th>memorisation</th></tr>"]
    for side, s in sides.items():
        if s:
            out.append(f"<tr><td>{side}</td><td>{escape(str(s.get('figure', '')))}</td></tr>")
    out.append("</table><p class='muted'>Canaries: random secrets planted in the training data, ranked among random "
               "secrets of the same form (exposure in bits). Extraction: training prefixes continued greedily. The "
               "paired tests are the memorisation.* rows below.</p>")  # fmt: skip
    return "".join(out)


def exports_table(exports: list[dict[str, Any]]) -> str:
    """The run's exports (`tunelab export` appends one per directory to the manifest), with their parity."""
    if not exports:
        return ""
    rows = [
        f"<tr><td class='small'>{escape(str(e.get('dir', '')))}</td><td>{escape(str(e.get('format', '')))} "
        f"{escape(' '.join(e.get('quantize') or []))}</td><td>{'passed' if e.get('parity_passed') else 'FAILED'}"
        f"</td><td class='small'><code>{escape(str(e.get('export_json_sha256', ''))[:16])}…</code></td></tr>"
        for e in exports
    ]
    return ("<h3>Exports</h3><table><tr><th>directory</th><th>format</th><th>parity</th>"
            "<th>export.json sha256</th></tr>" + "".join(rows) + "</table>")  # fmt: skip


def write_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    out = run_dir / "report.html"
    atomic_write_text(out, render_report(run_dir, summary))
    return out
