"""audit.html: what is in the data, on one self-contained page."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_text
from tunelab.report.html import CSS
from tunelab.report.svg import grouped_bars


def _table(rows: list[tuple[str, Any]]) -> str:
    return (
        "<table>"
        + "".join(f"<tr><td>{escape(k)}</td><td class='num'>{escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def render_audit_html(r: dict[str, Any]) -> str:
    verdict = r["verdict"]
    kind = "" if verdict == "pass" else "bad"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>tunelab data audit</title>"
             f"<style>{CSS}</style></head><body><h1>Data audit</h1>"]  # fmt: skip
    reasons = "; ".join(r["reasons"]) or "every check passed the policy"
    parts.append(f"<div class='verdict {kind}'><b>{escape(verdict.upper())}</b>: {escape(reasons)}</div>")
    cont = sum(c["contaminated"] for c in r["contamination"].values())
    parts.append("<h2>Records</h2>" + _table([
        ("records read", r["records_total"]), ("valid", r["records_valid"]), ("quarantined", r["quarantined"]),
        ("exact duplicates", r["duplicates"]["exact"]), ("near duplicates", r["duplicates"]["near"]),
        ("contaminated eval items", cont), ("records with PII", r["pii"]["records_with_pii"]),
    ]))  # fmt: skip
    if r["quarantine_reasons"]:
        parts.append("<h3>Why records were quarantined</h3>" + _table(sorted(r["quarantine_reasons"].items())))
    pf = r.get("preflight") or {}
    if pf.get("segments"):
        shown = "".join(
            f"<span style='background:#bbf7d0'>{escape(s['text'])}</span>" if s["trained"]
            else f"<span class='muted'>{escape(s['text'])}</span>" for s in pf["segments"]
        )  # fmt: skip
        parts.append(f"<h2>What is trained</h2><p>Record <code>{escape(pf['example_id'])}</code> as the model sees it; "
                     f"green tokens carry the loss ({pf['trained_tokens']} of {pf['tokens']}).</p>"
                     f"<pre style='white-space:pre-wrap'>{shown}</pre>")  # fmt: skip
    parts.append("<h2>Contamination</h2>")
    for path, c in r["contamination"].items():
        ids = ", ".join(c["eval_ids"][:30]) + (" …" if len(c["eval_ids"]) > 30 else "")
        parts.append(
            f"<p><code>{escape(path)}</code>: {c['contaminated']} of {c['items']} eval items "
            f"({', '.join(f'{k} {v}' for k, v in c.get('by_kind', {}).items())}). {escape(ids)}</p>"
        )
    parts.append("<h2>PII and secrets</h2>")
    counts = r["pii"]["counts"]
    parts.append(_table(sorted(counts.items())) if counts else "<p class='muted'>None found.</p>")
    parts.append("<h2>Licence</h2>" + "".join(
        f"<div class='licence'><b>{escape(str(lic['id']))}</b> — {escape(str(lic['name']))}: "
        f"<b>{escape(lic['status'])}</b> under this policy</div>" for lic in r["licence"]))  # fmt: skip
    d = r.get("diversity", {})
    if d:
        parts.append("<h2>Diversity and balance</h2>" + _table([
            ("input words (min / p50 / max)", f"{d['input_words']['min']} / {d['input_words']['p50']} / "
                                              f"{d['input_words']['max']}"),
            ("distinct-1 / distinct-2", f"{d['distinct_1']:.3f} / {d['distinct_2']:.3f}"),
            ("near-duplicate ratio", f"{d['near_duplicate_ratio']:.3f}"),
            ("languages (sample)", ", ".join(f"{k} {v}" for k, v in d.get("languages", {}).items())),
        ]))  # fmt: skip
    if r.get("labels") and len(r["labels"]) <= 50:
        labels = r["labels"]
        parts.append(
            "<h3>Answers (labels)</h3>"
            + grouped_bars(list(labels), {"records": list(labels.values())}, vmax=max(labels.values()))
        )
    if r["warnings"]:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in r["warnings"]) + "</ul>")
    parts.append("<h2>Files</h2><table><tr><th>file</th><th>records</th><th>sha256</th></tr>" + "".join(
        f"<tr><td>{escape(f['path'])}</td><td class='num'>{f['records']}</td><td><code>{f['sha256'][:16]}…</code>"
        f"</td></tr>" for f in r["files"]) + "</table></body></html>")  # fmt: skip
    return "".join(parts)


def write_audit_html(path: Path, report: dict[str, Any]) -> None:
    atomic_write_text(path, render_audit_html(report))
