"""Sign in and out, the runs (the key's jobs), one run with live progress over SSE, cancel.

Every page of one key shows only that key's runs (another key's run is 404, as in the API); an admin sees all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from tunelab.jobs import actions
from tunelab.jobs.service import JobsService, owner_filter
from tunelab.jobs.store import ACTIVE, JobRow
from tunelab.serve.protocol import ApiError
from tunelab.serve.state import state_of
from tunelab.ui import session
from tunelab.ui.web import Refused, Visitor, form, need, redirect, render, visitor

router = APIRouter(include_in_schema=False)
STREAM_MAX_S = 3600


@router.get("/")
async def home(request: Request) -> Response:
    return redirect("/runs" if visitor(request) else "/signin")


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    return render("signin.html", None, title="Sign in", error=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    data = await request.form()
    raw = str(data.get("key") or "").strip()
    key = state_of(request).store.verify(raw) if raw else None
    if key is None:
        return render("signin.html", None, 401, title="Sign in", error="That key is not valid (or it was revoked).")
    r = redirect("/runs")
    r.set_cookie(session.COOKIE, raw, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                 path="/", max_age=7 * 86400)  # fmt: skip
    return r


@router.post("/signout")
async def signout(request: Request) -> Response:
    v = visitor(request)
    if v is None:
        raise Refused(403, "You are not signed in.")
    await form(request, v)
    r = redirect("/signin")
    r.delete_cookie(session.COOKIE, path="/")
    return r


def run_row(svc: JobsService, j: JobRow) -> dict[str, Any]:
    f = svc.jobs.file(j.spec["training_file"])
    cmp = (j.result or {}).get("comparison") or {}
    return {"id": j.id, "status": j.status, "model": j.fine_tuned_model or j.spec["model"], "owner": j.owner_name,
            "data": f.filename if f else j.spec["training_file"], "file_id": j.spec["training_file"],
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at)), "verdict": cmp.get("verdict"),
            "better": cmp.get("better"), "worse": cmp.get("worse"), "metric": cmp.get("metric"),
            "base": cmp.get("base"), "tuned": cmp.get("tuned"), "delta": cmp.get("delta"),
            "ci": (cmp.get("ci_low"), cmp.get("ci_high")), "p": cmp.get("p_value"), "method": j.spec["method"]["type"],
            "kind": j.spec["tunelab"].get("kind", "lora"), "steps": j.spec["hyperparameters"]["steps"],
            "sweep": (j.spec.get("metadata") or {}).get("sweep")}  # fmt: skip


@router.get("/runs")
async def runs(request: Request) -> Response:
    v = need(request)
    jobs, _ = v.svc.jobs.jobs(owner_filter(v.key), limit=200)
    return render("runs.html", v, title="Runs", runs=[run_row(v.svc, j) for j in jobs])


def own_run(v: Visitor, job_id: str) -> JobRow:
    try:
        return actions.own_job(v.svc, v.key, job_id)
    except ApiError:
        raise Refused(404, "There is no such run.") from None


def _curve(events: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return sorted({(int(e["data"]["step"]), float(e["data"]["train_loss"])) for e in events
                   if e["type"] == "metrics" and e.get("data")})  # fmt: skip


def _eta(j: JobRow) -> str | None:
    if j.status != "running" or not j.estimated_finish:
        return None
    left = max(0, int(j.estimated_finish - time.time()))
    return f"about {left // 60} min {left % 60} s left" if left >= 60 else f"about {left} s left"


@router.get("/runs/{job_id}")
async def run_page(request: Request, job_id: str) -> Response:
    v = need(request)
    j = own_run(v, job_id)
    rows = v.svc.jobs.events_since(j.id, 0, limit=100_000)
    events = [e for _, e in rows]
    curve = _curve(events)
    return render("run.html", v, title=f"Run {j.id}", run=run_row(v.svc, j), job=j,
                  steps=int(j.spec["hyperparameters"]["steps"]), step=curve[-1][0] if curve else 0,
                  curve=curve, active=j.status in ACTIVE, eta=_eta(j), events=events[-30:][::-1],
                  comparison=(j.result or {}).get("comparison"), after=rows[-1][0] if rows else 0)  # fmt: skip


@router.post("/runs/{job_id}/cancel")
async def cancel(request: Request, job_id: str) -> Response:
    v = need(request)
    j = own_run(v, job_id)
    await form(request, v)
    if v.svc.jobs.transition(j.id, ACTIVE, status="cancelled", finished_at=int(time.time())):
        v.svc.jobs.event(j.id, "Job cancelled from the web page")
    return redirect(f"/runs/{j.id}")


@router.get("/runs/{job_id}/stream")
async def stream(request: Request, job_id: str) -> Response:
    """Server-sent events: each new job event as it is stored, then `end` once the job has finished."""
    v = visitor(request)
    try:
        j = actions.own_job(v.svc, v.key, job_id) if v else None
    except ApiError:
        j = None
    if v is None or j is None:
        return Response(status_code=404)
    svc = v.svc
    after = request.query_params.get("after", "0")
    start = int(after) if after.isdigit() else 0

    async def body() -> AsyncIterator[bytes]:
        n, t_end = start, time.time() + STREAM_MAX_S
        while time.time() < t_end and not await request.is_disconnected():
            for k, e in svc.jobs.events_since(j.id, n):
                n = k
                yield f"id: {k}\ndata: {json.dumps(e)}\n\n".encode()
            cur = svc.jobs.job(j.id)
            if cur is None or cur.status not in ACTIVE:
                yield f"event: end\ndata: {json.dumps({'status': cur.status if cur else 'gone'})}\n\n".encode()
                return
            if cur.estimated_finish and cur.status == "running":
                yield f"event: eta\ndata: {json.dumps({'eta': _eta(cur)})}\n\n".encode()
            await asyncio.sleep(0.5)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
