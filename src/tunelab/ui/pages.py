"""The pages: sign in, runs (the key's jobs), one run with live progress over SSE, cancel. Server-rendered with
Jinja2 (autoescaped: uploaded text is shown as text), a little plain JS for the live parts, nothing from a CDN.
Every page of one key shows only that key's runs (another key's run is 404, as in the API)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from tunelab.jobs.paths import jobs_dir
from tunelab.jobs.service import JobsService, owner_filter
from tunelab.jobs.store import ACTIVE, JobRow
from tunelab.serve.state import state_of
from tunelab.serve.store import ApiKey
from tunelab.ui import session

router = APIRouter(include_in_schema=False)
_env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape())
STREAM_MAX_S = 3600


def _render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**ctx), status_code=status,
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'self'; object-src 'none'; "
                                                            "frame-ancestors 'none'"})  # fmt: skip


_REFUSALS = {404: ("Not found", "There is no such run."), 403: ("Refused", "This form is not from this page.")}


def _refuse(status: int, who: ApiKey | None = None, csrf: str | None = None) -> HTMLResponse:
    title, message = _REFUSALS[status]
    return _render("error.html", status, title=title, message=message, who=who, csrf=csrf)


def _ctx(request: Request) -> tuple[JobsService, bytes]:
    svc: JobsService = request.app.state.jobs
    return svc, session.secret(jobs_dir(svc.cfg))


def _who(request: Request) -> tuple[ApiKey, str] | None:
    return session.signed_in(request, state_of(request).store)


def _signin_redirect() -> RedirectResponse:
    return RedirectResponse("/signin", status_code=303)


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse("/runs" if _who(request) else "/signin", status_code=303)


@router.get("/signin")
async def signin_page(request: Request) -> Response:
    return _render("signin.html", title="Sign in", error=None, who=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    raw = str(form.get("key") or "").strip()
    key = state_of(request).store.verify(raw) if raw else None
    if key is None:
        return _render("signin.html", 401, title="Sign in", error="That key is not valid (or it was revoked).",
                       who=None)  # fmt: skip
    r = RedirectResponse("/runs", status_code=303)
    r.set_cookie(session.COOKIE, raw, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                 path="/", max_age=7 * 86400)  # fmt: skip
    return r


@router.post("/signout")
async def signout(request: Request) -> Response:
    who = _who(request)
    _, sec = _ctx(request)
    form = await request.form()
    if who is None or not session.csrf_ok(str(form.get("csrf") or ""), who[1], sec):
        return _refuse(403)
    r = RedirectResponse("/signin", status_code=303)
    r.delete_cookie(session.COOKIE, path="/")
    return r


def _row(svc: JobsService, j: JobRow) -> dict[str, Any]:
    f = svc.jobs.file(j.spec["training_file"])
    cmp = (j.result or {}).get("comparison") or {}
    return {"id": j.id, "status": j.status, "model": j.fine_tuned_model or j.spec["model"], "owner": j.owner_name,
            "data": f.filename if f else j.spec["training_file"],
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(j.created_at)), "verdict": cmp.get("verdict"),
            "better": cmp.get("better"), "worse": cmp.get("worse"),
            "sweep": (j.spec.get("metadata") or {}).get("sweep")}  # fmt: skip


@router.get("/runs")
async def runs(request: Request) -> Response:
    who = _who(request)
    if who is None:
        return _signin_redirect()
    svc, sec = _ctx(request)
    jobs, _ = svc.jobs.jobs(owner_filter(who[0]), limit=200)
    return _render("runs.html", title="Runs", runs=[_row(svc, j) for j in jobs], who=who[0],
                   csrf=session.csrf_token(who[1], sec))  # fmt: skip


def _own(svc: JobsService, key: ApiKey, jid: str) -> JobRow | None:
    j = svc.jobs.job(jid)
    return j if j is not None and (key.admin or j.owner == key.id) else None


def _curve(events: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return sorted({(int(e["data"]["step"]), float(e["data"]["train_loss"])) for e in events
                   if e["type"] == "metrics" and e.get("data")})  # fmt: skip


@router.get("/runs/{job_id}")
async def run_page(request: Request, job_id: str) -> Response:
    who = _who(request)
    if who is None:
        return _signin_redirect()
    svc, sec = _ctx(request)
    j = _own(svc, who[0], job_id)
    if j is None:
        return _refuse(404, who[0], session.csrf_token(who[1], sec))
    events = [e for _, e in svc.jobs.events_since(j.id, 0, limit=100_000)]
    curve = _curve(events)
    steps = int(j.spec["hyperparameters"]["steps"])
    return _render("run.html", title=f"Run {j.id}", run=_row(svc, j), job=j, steps=steps,
                   step=curve[-1][0] if curve else 0, curve=json.dumps(curve), active=j.status in ACTIVE,
                   events=events[-30:][::-1], comparison=(j.result or {}).get("comparison"), who=who[0],
                   csrf=session.csrf_token(who[1], sec))  # fmt: skip


@router.post("/runs/{job_id}/cancel")
async def cancel(request: Request, job_id: str) -> Response:
    who = _who(request)
    if who is None:
        return _signin_redirect()
    svc, sec = _ctx(request)
    form = await request.form()
    j = _own(svc, who[0], job_id)
    if j is None:
        return _refuse(404, who[0])
    if not session.csrf_ok(str(form.get("csrf") or ""), who[1], sec):
        return _refuse(403, who[0])
    if svc.jobs.transition(j.id, ACTIVE, status="cancelled", finished_at=int(time.time())):
        svc.jobs.event(j.id, "Job cancelled from the web page")
    return RedirectResponse(f"/runs/{j.id}", status_code=303)


@router.get("/runs/{job_id}/stream")
async def stream(request: Request, job_id: str) -> Response:
    """Server-sent events: each new job event as it is stored, then `end` once the job has finished."""
    who = _who(request)
    svc, _ = _ctx(request)
    j = _own(svc, who[0], job_id) if who else None
    if j is None:
        return Response(status_code=404)
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
            await asyncio.sleep(0.5)

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
