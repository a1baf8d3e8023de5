"""Blind A/B rating in the browser: a rater sees a held-out prompt and the two models' answers in a random
order (`evaluate.ab.export_ab`, seeded), picks 1, 2 or tie (keys 1/2/3), and sees their progress. Ratings are
kept per rater as the CSV `tunelab eval import-ab` reads, so the results are its paired statistics; with several
raters, their agreement (Cohen's kappa) is shown too. The run's owner (or an admin) may add other keys as raters:
they see the rating page of that run and nothing else of it."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tunelab.evaluate.ab import RATINGS, agreement, export_ab, read_scores, summarise
from tunelab.fsutil import atomic_write_json, atomic_write_text
from tunelab.jobs.store import JobRow
from tunelab.ui.pages import own_run
from tunelab.ui.web import Refused, Visitor, form, need, redirect, render

router = APIRouter(include_in_schema=False)


def _ab(j: JobRow) -> Path:
    return Path(j.run_dir) / "ab"


def _raters(j: JobRow) -> list[str]:
    try:
        return list(json.loads((_ab(j) / "raters.json").read_text()))
    except (OSError, ValueError):
        return []


def rated_run(v: Visitor, job_id: str) -> JobRow:
    """The run if this key owns it, is an admin, or was added as a rater; its pairs exported on first use."""
    j = v.svc.jobs.job(job_id)
    if j is None or not (v.key.admin or j.owner == v.key.id or v.key.id in _raters(j)):
        raise Refused(404, "There is no such run.")
    if not (Path(j.run_dir) / "eval" / "tuned" / "metrics.json").is_file():
        raise Refused(404, "This run has no answers to rate yet: they appear once its evaluation has finished.")
    if not (_ab(j) / "ab-key.json").is_file():
        export_ab(Path(j.run_dir) / "eval" / "base", Path(j.run_dir) / "eval" / "tuned", _ab(j),
                  seed=int(j.spec["seed"]))  # fmt: skip
    return j


def _pairs(j: JobRow) -> list[dict[str, str]]:
    with open(_ab(j) / "ab.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _ratings_path(j: JobRow, key_id: str) -> Path:
    return _ab(j) / f"ratings-{key_id}.csv"


def _mine(j: JobRow, key_id: str) -> dict[str, str]:
    p = _ratings_path(j, key_id)
    if not p.is_file():
        return {}
    with open(p, newline="", encoding="utf-8") as f:
        return {r["pair"]: r["rating"] for r in csv.DictReader(f)}


@router.get("/runs/{job_id}/rate")
async def rate_page(request: Request, job_id: str) -> Response:
    v = need(request)
    j = await asyncio.to_thread(rated_run, v, job_id)
    pairs, mine = _pairs(j), _mine(j, v.key.id)
    want = request.query_params.get("pair")
    todo = [p for p in pairs if p["pair"] not in mine]
    cur = next((p for p in pairs if p["pair"] == want), None) or (todo[0] if todo else None)
    return render("rate.html", v, title="Which answer is better?", run_id=j.id, pair=cur, done=len(mine),
                  total=len(pairs), index=pairs.index(cur) + 1 if cur else None, mine=mine.get(cur["pair"]) if cur
                  else None, owner=v.key.admin or j.owner == v.key.id, raters=_rater_names(v, j))  # fmt: skip


@router.post("/runs/{job_id}/rate")
async def rate(request: Request, job_id: str) -> Response:
    v = need(request)
    j = await asyncio.to_thread(rated_run, v, job_id)
    q = await form(request, v)
    pid, r = str(q.get("pair") or ""), str(q.get("rating") or "")
    if r not in RATINGS or pid not in {p["pair"] for p in _pairs(j)}:
        raise Refused(400, "Choose 1, 2 or tie for a pair of this run.")
    mine = _mine(j, v.key.id)
    mine[pid] = r
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["pair", "rating"])
    w.writerows(sorted(mine.items()))
    atomic_write_text(_ratings_path(j, v.key.id), buf.getvalue())
    return redirect(f"/runs/{j.id}/rate")


def _rater_names(v: Visitor, j: JobRow) -> list[str]:
    names = {k.id: k.name for k in v.state.store.list_keys()}
    return [names.get(r, r) for r in _raters(j)]


@router.post("/runs/{job_id}/raters")
async def add_rater(request: Request, job_id: str) -> Response:
    """The owner adds another key (by its name) as a rater of this run."""
    v = need(request)
    j = own_run(v, job_id)
    q = await form(request, v)
    name = str(q.get("name") or "").strip()
    found = [k for k in v.state.store.list_keys() if k.name == name]
    if not found:
        raise Refused(400, f"There is no key named {name!r}.")
    raters = sorted({*_raters(j), *(k.id for k in found)})
    _ab(j).mkdir(parents=True, exist_ok=True)
    atomic_write_json(_ab(j) / "raters.json", raters)
    return redirect(f"/runs/{j.id}/rate")


@router.get("/runs/{job_id}/rate/results")
async def results(request: Request, job_id: str) -> Response:
    v = need(request)
    j = await asyncio.to_thread(rated_run, v, job_id)
    names = {k.id: k.name for k in v.state.store.list_keys()}
    per: dict[str, dict[str, float]] = {}
    for p in sorted(_ab(j).glob("ratings-*.csv")):
        scores = read_scores(_ab(j), p)
        if scores:
            per[names.get(p.stem[len("ratings-"):], p.stem)] = scores
    if not per:
        raise Refused(404, "Nobody has rated this run yet.")
    rows = [{"rater": n, **summarise(list(s.values()), resamples=2000)} for n, s in sorted(per.items())]
    pooled: dict[str, list[float]] = {}
    for s in per.values():
        for pid, x in s.items():
            pooled.setdefault(pid, []).append(x)
    everyone = summarise([sum(xs) / len(xs) for xs in pooled.values()], resamples=2000)
    return render("rate_results.html", v, title="A/B results", run_id=j.id, rows=rows, everyone=everyone,
                  raters=len(per), agree=agreement(per), total=len(_pairs(j)))  # fmt: skip
