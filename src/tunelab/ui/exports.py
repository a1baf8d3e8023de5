"""Export and download a run's model (GGUF for llama.cpp and Ollama, merged safetensors, or the adapter): the
jobs API's exports (`jobs.exports`, same rules), with each export's parity verdict beside its download."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from tunelab.jobs import exports
from tunelab.jobs.export_store import ExportRow
from tunelab.jobs.store import JobRow
from tunelab.serve.protocol import ApiError
from tunelab.ui.pages import own_run, run_row
from tunelab.ui.web import Refused, Visitor, form, need, redirect, render

router = APIRouter(include_in_schema=False)
KINDS = {"merged": "merged model (LoRA folded in)", "peft": "adapter copy", "f16": "GGUF f16", "q8_0": "GGUF q8_0",
         "q4_k_m": "GGUF q4_k_m", "lora_f16": "GGUF LoRA on the base"}  # fmt: skip


def _row(e: ExportRow) -> dict[str, Any]:
    o = exports.export_object(e)
    checks = [{"kind": KINDS.get(k, k), **v} for k, v in (o["parity"] or {}).items()]
    main = [f for f in o["files"] if f["name"].endswith(".gguf") or f["name"] == "Modelfile"]
    return {**o, "what": e.format + (f" {', '.join(e.quantize)}" if e.quantize else "") + (" + LoRA" if e.lora else ""),
            "checks": checks, "main_files": main}  # fmt: skip


def _page(v: Visitor, j: JobRow, error: str | None = None, status: int = 200) -> Response:
    rows, _ = v.svc.exports.of_job(j.id, limit=50)
    return render("export.html", v, status, title=f"Export {j.fine_tuned_model}", run=run_row(v.svc, j),
                  exports=[_row(e) for e in rows], error=error,
                  busy=any(e.status in ("queued", "running") for e in rows))  # fmt: skip


def _succeeded(v: Visitor, job_id: str) -> JobRow:
    j = own_run(v, job_id)
    if j.status != "succeeded":
        raise Refused(404, "This run has no model to export yet: it can be exported once the job succeeds.")
    return j


@router.get("/runs/{job_id}/export")
async def export_page(request: Request, job_id: str) -> Response:
    v = need(request)
    return _page(v, _succeeded(v, job_id))


@router.post("/runs/{job_id}/export")
async def export_create(request: Request, job_id: str) -> Response:
    v = need(request)
    j = _succeeded(v, job_id)
    q = await form(request, v)
    try:
        body = exports.ExportCreate(format=str(q.get("format") or "gguf"),
                                    quantize=[str(x) for x in q.getlist("quantize")] or ["q8_0"],
                                    lora=q.get("lora") == "on")  # fmt: skip
        exports.create(v.svc, v.key, j.id, body)
    except ValidationError as e:
        return _page(v, j, "; ".join(str(x["msg"]) for x in e.errors()), 400)
    except ApiError as e:
        return _page(v, j, e.message, e.status)
    return redirect(f"/runs/{j.id}/export")


@router.get("/runs/{job_id}/export/{export_id}/download")
async def download(request: Request, job_id: str, export_id: str) -> Any:
    v = need(request)
    try:
        return exports.content(exports.own(v.svc, v.key, job_id, export_id), request.query_params.get("file"))
    except ApiError as e:
        raise Refused(404 if e.status == 404 else 400, e.message) from None


@router.post("/runs/{job_id}/export/{export_id}/delete")
async def delete(request: Request, job_id: str, export_id: str) -> Response:
    v = need(request)
    await form(request, v)
    try:
        exports.delete(v.svc, v.key, job_id, export_id)
    except ApiError as e:
        raise Refused(404 if e.status == 404 else 400, e.message) from None
    return redirect(f"/runs/{job_id}/export")
