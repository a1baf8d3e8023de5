"""report.html for an image run: data, training curve, base vs tuned (grid, accuracy, KID), memorisation,
provenance. One self-contained page (the grid is embedded as a PNG data URI)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_text, read_json_object, read_jsonl
from tunelab.report.svg import line_chart

_CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.verdict{font-size:1.2em;padding:.6em 1em;background:#f4f6fa;border-left:4px solid #4a6fa5}
img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}.muted{color:#666}"""


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _verdict(m: dict[str, Any]) -> str:
    ca = m["class_accuracy"]
    better = ca["ci95"][0] > 0
    worse = ca["ci95"][1] < 0
    word = "better" if better else "worse" if worse else "not measurably different"
    text = (
        f"On {', '.join(m['target_classes'])}, the tuned model's samples are {word}: the judge reads the "
        f"intended class in {ca['tuned']:.0%} of them, against {ca['base']:.0%} for the base model "
        f"(same classes and seeds, p = {ca['p_value']:.2g})."
    )
    o = m.get("other_class_accuracy")
    if o and o["ci95"][1] < 0:
        text += (
            f" It got worse on the base's other classes ({', '.join(m['other_classes'])}): {o['base']:.0%} to "
            f"{o['tuned']:.0%}. Train on them too if they must stay."
        )
    return text


def render_image_report(run_dir: Path, summary: dict[str, Any]) -> str:
    m = read_json_object(run_dir / "eval" / "metrics.json") or {}
    a = read_json_object(run_dir / "audit" / "audit.json") or {}
    curve = read_jsonl(run_dir / "train" / "curve.jsonl") if (run_dir / "train" / "curve.jsonl").is_file() else []
    grid = (run_dir / "eval" / "grid.png").read_bytes() if (run_dir / "eval" / "grid.png").is_file() else b""
    ca = m.get("class_accuracy") or {}
    parts = [
        f"<!doctype html><meta charset=utf-8><title>tunelab image run</title><style>{_CSS}</style>",
        "<h1>Image fine-tune: base vs tuned</h1>",
    ]
    if ca:
        parts.append(f"<p class=verdict>{html.escape(_verdict(m))}</p>")
    parts.append(
        "<h2>Samples</h2><p>One row per class; left: the base model, right: the tuned model, "
        "each column the same seed. Rows, top to bottom: "
        + html.escape(", ".join([*m.get("target_classes", []), *m.get("other_classes", [])]))
        + ".</p>"
    )
    if grid:
        parts.append(
            f"<img class=grid alt='base vs tuned samples' src='data:image/png;base64,"
            f"{base64.b64encode(grid).decode()}'>"
        )
    if ca:
        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{_f(v['base'], 2)}</td><td>{_f(v['tuned'], 2)}</td></tr>"
            for c, v in m["per_class"].items()
        )
        parts.append(
            "<h2>Does it make the classes it was taught?</h2>"
            f"<p>Class accuracy of {m['samples_per_class']} samples per class, read by a classifier trained on the "
            f"real images ({_f(m['judge']['held_out_accuracy'])} accuracy on {m['judge']['held_out_images']} "
            f"held-out real ones).</p><table><tr><th></th><th>base</th><th>tuned</th><th>change (95% CI)</th>"
            f"<th>McNemar p</th></tr><tr><td>taught classes</td><td>{_f(ca['base'])}</td><td>{_f(ca['tuned'])}</td>"
            f"<td>{ca['delta']:+.3f} ({ca['ci95'][0]:+.3f} to {ca['ci95'][1]:+.3f})</td><td>{ca['p_value']:.2g}"
            f"</td></tr></table><table><tr><th>class</th><th>base</th><th>tuned</th></tr>{rows}</table>"
        )
    kid = m.get("kid")
    if kid:
        parts.append(
            "<h2>How close are the samples to real images?</h2>"
            f"<p>KID against {kid['real_images']} real eval images ({html.escape(kid['features'])}; lower is "
            "closer), with 95% bootstrap intervals, base and tuned resampled together.</p>"
            f"<table><tr><th>base</th><th>tuned</th><th>change</th></tr><tr><td>{_f(kid['base'], 4)} "
            f"({_f(kid['base_ci95'][0], 4)} to {_f(kid['base_ci95'][1], 4)})</td><td>{_f(kid['tuned'], 4)} "
            f"({_f(kid['tuned_ci95'][0], 4)} to {_f(kid['tuned_ci95'][1], 4)})</td><td>{kid['delta']:+.4f} "
            f"({kid['delta_ci95'][0]:+.4f} to {kid['delta_ci95'][1]:+.4f})</td></tr></table>"
        )
    mem = m.get("memorisation")
    if mem:
        nn = mem["nn_train_rms"]
        parts.append(
            "<h2>Does it copy its training images?</h2>"
            f"<p>{mem['tuned_copies']} of {mem['of']} tuned samples are closer to a training image than "
            f"{mem['copy_quantile']:.0%} of real eval images are (threshold {_f(mem['copy_threshold'])} RMS). "
            f"Median distance to the nearest training image: tuned {_f(nn['tuned_median'])}, base "
            f"{_f(nn['base_median'])}, real eval images {_f(nn['real_eval_median'])}.</p>"
        )
    if curve:
        parts.append(
            "<h2>Training</h2>"
            + line_chart(
                {"loss": [(r["step"], r["loss"]) for r in curve]}, xlabel="step", ylabel="noise-prediction loss"
            )
        )
        parts.append(
            f"<p>{summary['steps']} steps, {summary['examples']} images, {_f(summary['images_per_s'], 1)} images/s, "
            f"{html.escape(summary['precision'])}, {summary['trainable_params']:,} trainable of "
            f"{summary['total_params']:,} parameters, peak RSS {_f(summary['peak_rss_gb'], 2)} GB.</p>"
        )
    if a:
        parts.append(
            "<h2>Data</h2>"
            f"<p>{a['train_images']} training and {a['eval_images']} eval images kept of {a['images_seen']}; "
            f"{a['quarantined']} quarantined ({html.escape(str(a['quarantine_reasons']))}); duplicates removed: "
            f"{a['duplicates']['exact']} exact, {a['duplicates']['near']} near; "
            f"{a.get('removed_from_eval', 0)} eval images that duplicate training images left out. "
            f"Licences: {html.escape(', '.join(sorted({str(x['id']) for x in a['licence']})))}. "
            f"Verdict: {html.escape(a['verdict'])}.</p>"
        )
    parts.append(
        f"<h2>Provenance</h2><p class=muted>Base model {html.escape(str(summary['base_model']))}; "
        "every input and output is hashed in manifest.json (<code>tunelab govern verify RUN</code>).</p>"
    )
    return "\n".join(parts) + "\n"


def write_image_report(run_dir: Path, summary: dict[str, Any]) -> Path:
    out = run_dir / "report.html"
    atomic_write_text(out, render_image_report(run_dir, summary))
    return out
