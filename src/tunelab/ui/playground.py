"""Deploy and try: a succeeded job's model is an endpoint already (the jobs catalog serves it by name). This page
gives a chat playground that streams, copy-ready `curl` and `openai` snippets with the model's name (never the
key), the model card and the report to download, and the key's usage and cost from the ledger.

The playground calls the same serving logic as `/v1/chat/completions` (keys, limits, guards, ledger), as the
signed-in key: the page's script cannot read the HttpOnly cookie, so it posts to `/runs/<id>/chat` with the
page's CSRF token, and the server adds the key to the request it passes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError

from tunelab.data.tasks import read_datacard
from tunelab.fsutil import atomic_write_text
from tunelab.govern.provenance import record_report
from tunelab.jobs.store import JobRow
from tunelab.serve.completions import complete
from tunelab.serve.protocol import ApiError, ChatRequest
from tunelab.ui.pages import own_run, run_row
from tunelab.ui.web import Refused, Visitor, check_csrf, env, form, need, render

router = APIRouter(include_in_schema=False)
MAX_TURNS = 20


def _served(v: Visitor, job_id: str) -> JobRow:
    j = own_run(v, job_id)
    if j.status != "succeeded" or not j.fine_tuned_model:
        raise Refused(404, "This run has no model to try yet: it is served the moment the job succeeds.")
    return j


def _instruction(v: Visitor, j: JobRow) -> str:
    """The instruction the training examples began with (the upload's column choice), so the model is tried as
    it was trained: without it, a tuned model is asked something it never saw."""
    f = v.svc.jobs.file(j.spec["training_file"])
    card = read_datacard(Path(f.path)) if f else None
    cols = (card or {}).get("columns")
    return str(cols.get("system") or "") if isinstance(cols, dict) else ""


def _usage(v: Visitor) -> list[dict[str, Any]]:
    rows = v.state.store.usage_summary(v.state.cfg.prices)
    return rows if v.key.admin else [r for r in rows if r["key_id"] == v.key.id]


def _try_page(v: Visitor, request: Request, j: JobRow, messages: list[dict[str, str]], error: str | None = None,
              status: int = 200, system: str | None = None) -> Response:  # fmt: skip
    base_url = str(request.base_url).rstrip("/") + "/v1"
    return render("try.html", v, status, title=f"Try {j.fine_tuned_model}", run=run_row(v.svc, j),
                  model=j.fine_tuned_model, base_url=base_url, messages=messages, error=error,
                  system=_instruction(v, j) if system is None else system,
                  usage=[r for r in _usage(v) if r["model"] == j.fine_tuned_model],
                  has_card=(Path(j.run_dir) / "model" / "README.md").is_file(),
                  has_report=(Path(j.run_dir) / "eval" / "comparison.json").is_file())  # fmt: skip


@router.get("/runs/{job_id}/try")
async def try_page(request: Request, job_id: str) -> Response:
    v = need(request)
    return _try_page(v, request, _served(v, job_id), [])


def _as_key(request: Request, v: Visitor) -> Request:
    """The same request as the API sees a client of this key: Authorization set, the cookie left out."""
    headers = [(k, val) for k, val in request.scope["headers"] if k not in (b"authorization", b"cookie")]
    headers.append((b"authorization", f"Bearer {v.raw}".encode()))
    return Request({**request.scope, "headers": headers}, request.receive)


def _chat_body(j: JobRow, messages: Any, stream: bool) -> ChatRequest:
    if not isinstance(messages, list) or not messages or len(messages) > 2 * MAX_TURNS:
        raise ApiError(400, "send the conversation as a list of messages", param="messages")
    return ChatRequest.model_validate({"model": j.fine_tuned_model, "messages": messages, "stream": stream})


@router.post("/runs/{job_id}/chat")
async def chat(request: Request, job_id: str) -> Response:
    """The playground's stream: OpenAI's chat completion chunks as SSE (what `/v1/chat/completions` sends)."""
    v = need(request)
    j = _served(v, job_id)
    check_csrf(v, request.headers.get("x-csrf-token"))
    try:
        raw = await request.body()
        body = _chat_body(j, json.loads(raw or b"{}").get("messages"), True)
        return await complete(v.state, _as_key(request, v), body, True)
    except ApiError as e:
        return JSONResponse({"error": {"message": e.message, "code": e.code}}, status_code=e.status)
    except (ValueError, ValidationError):
        return JSONResponse({"error": {"message": "send {\"messages\": [...]} as JSON"}}, status_code=400)


@router.post("/runs/{job_id}/try")
async def try_no_script(request: Request, job_id: str) -> Response:
    """The playground without script: the whole conversation is in the form; the answer comes in one piece."""
    v = need(request)
    j = _served(v, job_id)
    q = await form(request, v)
    try:
        history = json.loads(str(q.get("history") or "[]"))
    except ValueError:
        history = []
    text, system = str(q.get("message") or "").strip(), str(q.get("system") or "").strip()
    messages = [m for m in history if isinstance(m, dict)][-2 * MAX_TURNS :]
    if not text:
        return _try_page(v, request, j, messages, "Type a message first.", 400, system)
    messages.append({"role": "user", "content": text})
    sent = [{"role": "system", "content": system}, *messages] if system else messages
    try:
        out = await complete(v.state, _as_key(request, v), _chat_body(j, sent, False), True)
    except ApiError as e:
        return _try_page(v, request, j, messages, e.message, e.status, system)
    messages.append({"role": "assistant", "content": out["choices"][0]["message"]["content"]})
    return _try_page(v, request, j, messages, system=system)


@router.get("/runs/{job_id}/model-card")
async def model_card(request: Request, job_id: str) -> Response:
    v = need(request)
    j = _served(v, job_id)
    p = Path(j.run_dir) / "model" / "README.md"
    if not p.is_file():
        raise Refused(404, "This run has no model card.")
    return FileResponse(p, media_type="text/markdown", filename=f"{j.id}-model-card.md")


@router.get("/runs/{job_id}/report")
async def report(request: Request, job_id: str) -> Response:
    """The comparison as one self-contained page (styles inline, no script), kept in the run directory too."""
    from tunelab.ui.results import comparison_context

    v = need(request)
    j = own_run(v, job_id)
    ctx = comparison_context(v, j, "all", "")
    css = (Path(__file__).parent / "static" / "app.css").read_text()
    html = env.get_template("compare.html").render(who=None, csrf=None, standalone=True, css=css, **ctx)
    out = Path(j.run_dir) / "report.html"
    atomic_write_text(out, html)
    if (Path(j.run_dir) / "manifest.json").is_file():
        record_report(Path(j.run_dir), out)
    return FileResponse(out, media_type="text/html", filename=f"{j.id}-report.html")


@router.get("/usage")
async def usage(request: Request) -> Response:
    v = need(request)
    decisions = v.state.store.guard_decisions(key_id=None if v.key.admin else v.key.id)
    return render("usage.html", v, title="Usage", rows=_usage(v), prices=v.state.cfg.prices, decisions=decisions)
