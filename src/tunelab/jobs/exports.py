"""A succeeded job's model as a download: merged safetensors, GGUF (llama.cpp, Ollama) or the adapter, each
checked for parity by an independent runtime before it is offered.

    POST   /v1/fine_tuning/jobs/{job}/exports                {"format": "gguf", "quantize": ["q8_0"], "lora": false}
    GET    /v1/fine_tuning/jobs/{job}/exports                 newest first, `after` and `limit`
    GET    /v1/fine_tuning/jobs/{job}/exports/{export}
    GET    /v1/fine_tuning/jobs/{job}/exports/{export}/content   a zip of every file; `?file=NAME` one file
    DELETE /v1/fine_tuning/jobs/{job}/exports/{export}        its files and its row (not while it runs)

The worker runs the export (`tunelab export` as a child process, so llama.cpp runs outside the server); its
outcome is the export's status: `succeeded` when every parity gate passed, `failed` otherwise, with the gate's
reasons in `error` and the files kept for inspection. The REST routes and the web page call the same actions.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from tunelab.export.gguf import QUANTS
from tunelab.jobs import actions
from tunelab.jobs.export_store import ExportRow
from tunelab.jobs.service import JobsService
from tunelab.serve.protocol import ApiError
from tunelab.serve.state import state_of
from tunelab.serve.store import ApiKey

router = APIRouter()
CHUNK = 1 << 20
MAX_ACTIVE = 2  # queued or running exports per job


class ExportCreate(BaseModel):
    model_config = {"extra": "forbid"}

    format: Literal["merged", "gguf", "peft"] = "gguf"
    quantize: list[str] = Field(default_factory=lambda: ["q8_0"], min_length=1, max_length=len(QUANTS))
    lora: bool = False

    @field_validator("quantize", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [q.strip() for q in v.split(",") if q.strip()] if isinstance(v, str) else v

    @field_validator("quantize")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [q for q in v if q not in QUANTS]
        if bad:
            raise ValueError(f"unknown quantization {bad[0]!r}; known: {', '.join(QUANTS)}")
        return list(dict.fromkeys(v))



def export_object(e: ExportRow) -> dict[str, Any]:
    res = e.result or {}
    return {
        "id": e.id, "object": "fine_tuning.job.export", "fine_tuning_job_id": e.job_id, "created_at": e.created_at,
        "started_at": e.started_at, "finished_at": e.finished_at, "status": e.status, "format": e.format,
        "quantize": e.quantize if e.format == "gguf" else [], "lora": e.lora, "error": e.error,
        "parity_passed": res.get("passed"), "parity": res.get("parity"), "items": res.get("items"),
        "files": res.get("files", []),
        "download_url": f"/v1/fine_tuning/jobs/{e.job_id}/exports/{e.id}/content" if res.get("files") else None,
    }  # fmt: skip


# --- actions: what a key may do, whatever asked (the routes below and the web page) --------------------------


def create(svc: JobsService, key: ApiKey, job_id: str, body: ExportCreate) -> ExportRow:
    j = actions.own_job(svc, key, job_id)
    if j.status != "succeeded":
        raise ApiError(400, f"only a succeeded job's model can be exported; this job is {j.status}",
                       param="fine_tuning_job_id", code="invalid_job_state")  # fmt: skip
    if body.lora and body.format != "gguf":
        raise ApiError(400, "lora is a GGUF option (a LoRA-only GGUF beside the base's)", param="lora")
    if svc.exports.active(j.id) >= MAX_ACTIVE:
        raise ApiError(429, f"this job already has {MAX_ACTIVE} exports queued or running", code="quota_exceeded",
                       type="rate_limit_exceeded")  # fmt: skip
    quants = body.quantize if body.format == "gguf" else []
    row = svc.exports.add(j.id, j.owner, body.format, quants, body.lora, str(Path(j.run_dir) / "exports" / "{id}"))
    what = body.format + (f" {','.join(quants)}" if quants else "") + (" + LoRA GGUF" if body.lora else "")
    svc.jobs.event(j.id, f"Export queued: {row.id} ({what})", data={"export": row.id})
    return row


def own(svc: JobsService, key: ApiKey, job_id: str, export_id: str) -> ExportRow:
    j = actions.own_job(svc, key, job_id)
    e = svc.exports.get(export_id)
    if e is None or e.job_id != j.id:
        raise ApiError(404, f"no such export: {export_id}", param="export_id", code="export_not_found",
                       type="not_found_error")  # fmt: skip
    return e


def delete(svc: JobsService, key: ApiKey, job_id: str, export_id: str) -> ExportRow:
    from tunelab.export.command import forget_in_run

    j = actions.own_job(svc, key, job_id)
    e = own(svc, key, job_id, export_id)
    if not svc.exports.set(e.id, ("succeeded", "failed", "queued"), status="deleted"):
        raise ApiError(409, "the export is running; delete it once it has finished", param="export_id",
                       code="export_running")  # fmt: skip
    shutil.rmtree(e.out_dir, ignore_errors=True)
    forget_in_run(Path(j.run_dir), Path(e.out_dir))
    svc.exports.delete(e.id)
    return e


def file_path(e: ExportRow, name: str) -> Path:
    """One recorded file of the export: only names the export wrote (no path a request makes up)."""
    names = {f["name"] for f in (e.result or {}).get("files", [])}
    if name not in names:
        raise ApiError(404, f"the export has no file {name!r}", param="file", code="file_not_found",
                       type="not_found_error")  # fmt: skip
    p = Path(e.out_dir) / name
    if not p.is_file():
        raise ApiError(410, f"the file {name!r} of this export is gone from disk", param="file", code="file_gone")
    return p


def zip_stream(e: ExportRow) -> Iterator[bytes]:
    """Every file of the export as one zip, written as it is sent (stored, not compressed: weights do not
    compress, and the client starts receiving at once)."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f in (e.result or {}).get("files", []):
            src = file_path(e, f["name"])
            with open(src, "rb") as fin, zf.open(f"{e.id}/{f['name']}", "w", force_zip64=True) as dst:
                while chunk := fin.read(CHUNK):
                    dst.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()


class _Sink:
    """A write-only stream zipfile writes into (it sees it cannot seek and writes data descriptors)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, b: bytes) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


# --- routes ------------------------------------------------------------------------------------------------


def _svc(request: Request) -> tuple[JobsService, ApiKey]:
    return request.app.state.jobs, state_of(request).authorise(request)


@router.post("/v1/fine_tuning/jobs/{job_id}/exports")
async def create_export(request: Request, job_id: str, body: ExportCreate) -> dict[str, Any]:
    svc, key = _svc(request)
    return export_object(create(svc, key, job_id, body))


@router.get("/v1/fine_tuning/jobs/{job_id}/exports")
async def list_exports(request: Request, job_id: str) -> dict[str, Any]:
    svc, key = _svc(request)
    j = actions.own_job(svc, key, job_id)
    q = request.query_params
    limit = q.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise ApiError(400, "limit must be an integer from 1 to 100", param="limit")
    rows, more = svc.exports.of_job(j.id, after=q.get("after"), limit=int(limit))
    data = [export_object(e) for e in rows]
    return {"object": "list", "data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}  # fmt: skip


@router.get("/v1/fine_tuning/jobs/{job_id}/exports/{export_id}")
async def retrieve_export(request: Request, job_id: str, export_id: str) -> dict[str, Any]:
    svc, key = _svc(request)
    return export_object(own(svc, key, job_id, export_id))


@router.get("/v1/fine_tuning/jobs/{job_id}/exports/{export_id}/content")
async def export_content(request: Request, job_id: str, export_id: str) -> Any:
    svc, key = _svc(request)
    return content(own(svc, key, job_id, export_id), request.query_params.get("file"))


def content(e: ExportRow, name: str | None) -> Any:
    if not (e.result or {}).get("files"):
        raise ApiError(409, f"the export is {e.status} and has no files yet", param="export_id",
                       code="export_not_ready")  # fmt: skip
    if name:
        p = file_path(e, name)
        return FileResponse(p, media_type="application/octet-stream", filename=Path(name).name)
    for f in e.result["files"]:  # type: ignore[index]
        file_path(e, f["name"])  # a missing file is a clean 410 before the zip starts, not a cut-off download
    return StreamingResponse(zip_stream(e), media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{e.id}.zip"'})  # fmt: skip


@router.delete("/v1/fine_tuning/jobs/{job_id}/exports/{export_id}")
async def delete_export(request: Request, job_id: str, export_id: str) -> dict[str, Any]:
    svc, key = _svc(request)
    e = delete(svc, key, job_id, export_id)
    return {"id": e.id, "object": "fine_tuning.job.export", "deleted": True}
