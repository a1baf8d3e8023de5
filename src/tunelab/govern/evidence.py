"""`tunelab govern evidence RUN --framework ... --out DIR`: a crosswalk from what a run did to framework items.

For each item of `frameworks.yaml` (a data file a reviewer edits): the status (`evidenced` when every fact the
item needs is present in the run, `partial` when some are, `not evidenced` when none), the measured figures,
the artifacts with their sha256, what is missing and how to produce it, and what no run can show (the
organisation's part). Written as evidence.json, evidence.md and evidence.html, with the run's risk register
(risks.json, risks.md) and, given a serving store, the incident log (incidents.json).
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import yaml

from tunelab.fsutil import atomic_write_json, atomic_write_text
from tunelab.govern.facts import Fact, collect
from tunelab.govern.risks import register

FRAMEWORKS = ("nist-ai-rmf", "nist-ai-600-1", "iso-42001")
STATUS_WORDS = {"evidenced": "Evidenced", "partial": "Partial", "not evidenced": "Not evidenced"}


def mapping(path: Path | None = None) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((path or Path(__file__).with_name("frameworks.yaml")).read_text("utf-8"))
    return data


def crosswalk(facts: dict[str, Fact], spec: dict[str, Any], frameworks: list[str]) -> dict[str, Any]:
    from tunelab.errors import ConfigError

    out: dict[str, Any] = {}
    for fw in frameworks:
        if fw not in spec["frameworks"]:
            raise ConfigError(f"unknown framework {fw!r}; known: {', '.join(spec['frameworks'])}", field="--framework")
        items = []
        for it in spec["frameworks"][fw]["items"]:
            unknown = [f for f in it["facts"] if f not in facts]
            if unknown:
                raise ConfigError(f"{fw} {it['id']} names an unknown fact {unknown[0]!r}", field="facts")
            have = [facts[f] for f in it["facts"] if facts[f].present]
            missing = [f for f in it["facts"] if not facts[f].present]
            status = "evidenced" if not missing else "partial" if have else "not evidenced"
            items.append({
                "id": it["id"], "text": it["text"], "actions": it.get("actions", []), "status": status,
                "evidence": [{"fact": f.name, "figure": f.figure, "artifacts": f.evidence} for f in have],
                "missing": [{"fact": f, "how": spec["facts_help"].get(f, "")} for f in missing],
                "outside_tunelab": it.get("gap", ""),
            })  # fmt: skip
        counts = {s: sum(1 for i in items if i["status"] == s) for s in STATUS_WORDS}
        out[fw] = {"title": spec["frameworks"][fw]["title"], "counts": counts, "items": items}
    return out


def write_evidence(
    run: Path, out: Path, frameworks: list[str], *, incidents: dict[str, Any] | None = None, owner: str = "",
    mapping_file: Path | None = None, watermark: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    facts = collect(run, incidents, watermark)
    spec = mapping(mapping_file)
    cw = crosswalk(facts, spec, frameworks)
    risks = register(facts, owner)
    from tunelab.fsutil import sha256_file

    doc = {
        "run": str(run), "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "manifest_sha256": sha256_file(run / "manifest.json") if (run / "manifest.json").is_file() else None,
        "mapping_sha256": sha256_file(mapping_file or Path(__file__).with_name("frameworks.yaml")),
        "note": "Item texts are paraphrases; read each item in its framework. Status is what this run's files show.",
        "frameworks": cw,
        "facts": {k: {"present": f.present, "figure": f.figure, "artifacts": f.evidence} for k, f in facts.items()},
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "evidence.json", doc)
    atomic_write_text(out / "evidence.md", markdown(doc))
    atomic_write_text(out / "evidence.html", page(doc, risks, incidents))
    atomic_write_json(out / "risks.json", risks)
    atomic_write_text(out / "risks.md", risks_markdown(risks))
    if incidents is not None:
        atomic_write_json(out / "incidents.json", incidents)
    return {"out": str(out), "frameworks": {k: v["counts"] for k, v in cw.items()},
            "risks": {r["id"]: r["level"] for r in risks}}  # fmt: skip


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Evidence from run `{doc['run']}`", "", doc["note"], ""]
    for fw in doc["frameworks"].values():
        c = fw["counts"]
        lines += [f"## {fw['title']}", "", f"{c['evidenced']} evidenced, {c['partial']} partial, "
                  f"{c['not evidenced']} not evidenced.", "", "| Item | Status | What the run shows | Missing | "
                  "Outside tunelab |", "|---|---|---|---|---|"]  # fmt: skip
        for it in fw["items"]:
            shows = "; ".join(f"{e['figure']} ({', '.join(a['path'] for a in e['artifacts'])})" for e in it["evidence"])
            miss = "; ".join(f"{m['fact']}: {m['how']}" for m in it["missing"])
            lines.append(f"| **{it['id']}** {_md(it['text'])} | {STATUS_WORDS[it['status']]} | {_md(shows)} | "
                         f"{_md(miss)} | {_md(it['outside_tunelab'])} |")  # fmt: skip
        lines.append("")
    return "\n".join(lines) + "\n"


def risks_markdown(risks: list[dict[str, Any]]) -> str:
    lines = ["# Risk register", "", "| ID | Risk | Measured | Likelihood | Impact | Level | Mitigation | Owner |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in risks:
        lines.append(f"| {r['id']} | {_md(r['risk'])} | {_md(r['measured'])} | {r['likelihood']} | {r['impact']} | "
                     f"{r['level']} | {_md(r['mitigation'])} | {_md(r['owner']) or '(unassigned)'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def page(doc: dict[str, Any], risks: list[dict[str, Any]], incidents: dict[str, Any] | None) -> str:
    e = html.escape
    css = ("body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1a1a1a}"
           "table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;"
           "vertical-align:top}.evidenced{color:#166534;font-weight:700}.partial{color:#92400e;font-weight:700}"
           ".not-evidenced{color:#9b1c1c;font-weight:700}code{font-size:.85em}.hint{color:#555}")  # fmt: skip
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Evidence · {e(doc['run'])}</title>"
           f"<style>{css}</style></head><body><h1>Evidence from a tunelab run</h1>",
           f"<p>Run <code>{e(doc['run'])}</code>, generated {e(doc['generated_at'])}. "
           f"{e(doc['note'])}</p>"]  # fmt: skip
    for fw in doc["frameworks"].values():
        c = fw["counts"]
        out.append(f"<h2>{e(fw['title'])}</h2><p>{c['evidenced']} evidenced, {c['partial']} partial, "
                   f"{c['not evidenced']} not evidenced.</p><table><thead><tr><th scope='col'>Item</th>"
                   "<th scope='col'>Status</th><th scope='col'>What the run shows</th><th scope='col'>Missing</th>"
                   "<th scope='col'>Outside tunelab</th></tr></thead><tbody>")  # fmt: skip
        for it in fw["items"]:
            shows = "".join(f"<li>{e(x['figure'])}<br><span class='hint'>"
                            + ", ".join(f"<code>{e(a['path'])}</code> {e((a['sha256'] or 'missing')[:12])}"
                                        for a in x["artifacts"]) + "</span></li>" for x in it["evidence"])  # fmt: skip
            miss = "".join(f"<li>{e(m['fact'])}: {e(m['how'])}</li>" for m in it["missing"])
            acts = f"<br><span class='hint'>actions under {e(', '.join(it['actions']))}</span>" if it["actions"] else ""
            cls = it["status"].replace(" ", "-")
            out.append(f"<tr><td><strong>{e(it['id'])}</strong> {e(it['text'])}{acts}</td><td class='{cls}'>"
                       f"{STATUS_WORDS[it['status']]}</td><td><ul>{shows}</ul></td><td><ul>{miss}</ul></td>"
                       f"<td>{e(it['outside_tunelab'])}</td></tr>")  # fmt: skip
        out.append("</tbody></table>")
    out.append("<h2>Risk register</h2><table><thead><tr><th scope='col'>Risk</th><th scope='col'>Measured</th>"
               "<th scope='col'>Likelihood</th><th scope='col'>Impact</th><th scope='col'>Level</th>"
               "<th scope='col'>Mitigation</th><th scope='col'>Owner</th></tr></thead><tbody>")  # fmt: skip
    for r in risks:
        out.append(f"<tr><td>{e(r['id'])} {e(r['risk'])}</td><td>{e(r['measured'])}</td><td>{e(r['likelihood'])}</td>"
                   f"<td>{e(r['impact'])}</td><td>{e(r['level'])}</td><td>{e(r['mitigation'])}</td>"
                   f"<td>{e(r['owner'] or '(unassigned)')}</td></tr>")  # fmt: skip
    out.append("</tbody></table>")
    if incidents is not None:
        out.append(f"<h2>Incident log</h2><p>{incidents['requests']} requests in <code>{e(incidents['store'])}</code>"
                   f"; {incidents['total']} guard decisions.</p><ul>")  # fmt: skip
        for g, n in sorted(incidents["by_guard"].items()):
            out.append(f"<li>{e(g)}: {n}<ul>" + "".join(
                f"<li>{e(s['time'])} {e(str(s['model']))} {e(s['action'])}: {e(str(s['sample'] or ''))}</li>"
                for s in incidents["samples"].get(g, [])) + "</ul></li>")  # fmt: skip
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
