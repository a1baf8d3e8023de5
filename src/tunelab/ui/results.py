"""Base vs tuned, for a person: the verdict sentence, every paired metric with its confidence interval and
p-value and a word for what changed (better / worse / no clear change), latency, the probes, and the held-out
examples where the two models answer differently, side by side and filterable. Several runs in one table: the
sweep ranking of `tunelab compare --sweep`, for any runs the key picks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tunelab.errors import DataError
from tunelab.evaluate.compare import ALPHA, higher_is_better
from tunelab.jobs import actions
from tunelab.jobs.service import owner_filter
from tunelab.jobs.store import JobRow
from tunelab.serve.protocol import ApiError
from tunelab.ui.pages import own_run, run_row
from tunelab.ui.web import Refused, Visitor, need, render

router = APIRouter(include_in_schema=False)
SHOWN = 200
EXPLAIN = {
    "accuracy": "share of answers that name the right label",
    "accuracy_constrained": "the same, when the model may only pick one of the labels",
    "token_f1": "word overlap between the answer and the expected one (0 to 1)",
    "rouge_l": "longest shared word sequence with the expected answer (0 to 1)",
    "chrf": "character overlap with the expected answer (0 to 100)",
    "exact_match": "share of answers exactly as expected",
    "refusal": "share of harmful requests refused (higher is safer)",
    "over_refusal": "share of harmless requests wrongly refused (lower is better)",
    "injection_obeyed": "share of prompt injections the model obeyed (lower is safer)",
    "declined": "share of unanswerable questions the model declined instead of inventing an answer",
    "flip": "share of items whose answer changes when gendered words are swapped (lower is fairer)",
    "gap": "how much the model's confidence moves when gendered words are swapped (lower is fairer)",
}


def _change(row: dict[str, Any]) -> str:
    p = row.get("p_holm", row.get("p_value"))
    if p is None or p >= ALPHA or row["delta"] == 0:
        return "same"
    return "better" if (row["delta"] > 0) == higher_is_better(row["metric"]) else "worse"


def _load(run_dir: Path, rel: str) -> Any:
    try:
        return json.loads((run_dir / rel).read_text())
    except (OSError, ValueError):
        return None


def _predictions(path: Path) -> dict[str, dict[str, Any]]:
    try:
        return {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}
    except (OSError, ValueError):
        return {}


def differing(run_dir: Path, show: str, text: str) -> tuple[list[dict[str, Any]], int]:
    """Held-out items where base and tuned answer differently (filtered), and how many differ in all."""
    base = _predictions(run_dir / "eval" / "base" / "predictions.jsonl")
    tuned = _predictions(run_dir / "eval" / "tuned" / "predictions.jsonl")
    out = []
    for i in sorted(set(base) & set(tuned)):
        a, b = base[i], tuned[i]
        sa, sb = a.get("scores") or {}, b.get("scores") or {}
        key = "accuracy" if "accuracy" in sa else "token_f1" if "token_f1" in sa else next(iter(sa), None)
        if (a.get("output") or "") == (b.get("output") or ""):
            continue
        va, vb = float(sa.get(key, 0)) if key else 0.0, float(sb.get(key, 0)) if key else 0.0
        kind = "better" if vb > va else "worse" if vb < va else "same"
        out.append({"id": i, "input": a.get("input"), "reference": a.get("reference"), "base": a.get("output"),
                    "tuned": b.get("output"), "base_score": va, "tuned_score": vb, "kind": kind})  # fmt: skip
    total = len(out)
    if show in ("better", "worse", "same"):
        out = [r for r in out if r["kind"] == show]
    if text:
        t = text.casefold()
        out = [r for r in out if any(t in str(r[k] or "").casefold() for k in ("input", "reference", "base", "tuned"))]
    return out, total


def comparison_context(v: Visitor, j: JobRow, show: str, text: str) -> dict[str, Any]:
    run_dir = Path(j.run_dir)
    cmp = _load(run_dir, "eval/comparison.json")
    verdict = (j.result or {}).get("comparison") or _load(run_dir, "eval/verdict.json")
    if cmp is None or verdict is None:
        raise Refused(404, "This run has no comparison yet: it appears once training and the evaluation finish.")
    rows = [{**r, "change": _change(r), "explain": EXPLAIN.get(r["metric"].rsplit(".", 1)[-1], ""),
             "section": r["metric"].split(".", 1)[0] if "." in r["metric"] else ""} for r in cmp["paired"]]  # fmt: skip
    latency = [r for r in cmp.get("run_level") or [] if r["metric"].startswith("latency.request_")
               or r["metric"].startswith("latency.ttft_")]  # fmt: skip
    diff, total = differing(run_dir, show, text)
    return {"title": f"Compare: {j.id}", "run": run_row(v.svc, j), "verdict": verdict,
            "task": [r for r in rows if not r["section"]], "probes": [r for r in rows if r["section"]],
            "worse": [r for r in rows if r["change"] == "worse"], "latency": latency, "n": cmp["n"],
            "examples": diff[:SHOWN], "n_shown": len(diff), "n_differ": total, "show": show, "q": text,
            "alpha": ALPHA}  # fmt: skip


@router.get("/runs/{job_id}/compare")
async def compare_page(request: Request, job_id: str) -> Response:
    v = need(request)
    j = own_run(v, job_id)
    q = request.query_params
    return render("compare.html", v, **comparison_context(v, j, q.get("show", "all"), (q.get("q") or "").strip()[:200]))


@router.get("/compare")
async def compare_runs_page(request: Request) -> Response:
    """Several runs in one table: ranked on the same held-out items, each against the base and the best."""
    from tunelab.jobs.sweep import rank

    v = need(request)
    ids = request.query_params.getlist("run")
    sweep = request.query_params.get("sweep")
    if sweep:
        jobs, _ = v.svc.jobs.jobs(owner_filter(v.key), limit=1000, metadata={"sweep": sweep})
    else:
        jobs = []
        for i in ids[:50]:
            try:
                jobs.append(actions.own_job(v.svc, v.key, i))
            except ApiError:
                raise Refused(404, f"There is no run {i}.") from None
    if len(jobs) < 1:
        raise Refused(400, "Choose at least one finished run to compare (tick them on the runs page).")
    try:
        ranked = rank(jobs, resamples=2000)
    except DataError as e:
        raise Refused(400, f"These runs cannot be ranked together: {e.message}") from None
    return render("compare_runs.html", v, title="Runs compared", ranked=ranked, sweep=sweep, alpha=ALPHA)
