"""`/v1/files` and `/v1/fine_tuning/jobs` in OpenAI's shapes: every object belongs to the key that made it
(another key gets 404; an admin key sees all), lists page with `after` and `limit`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from tunelab.jobs import actions
from tunelab.jobs import files as upload
from tunelab.jobs.paths import files_dir
from tunelab.jobs.service import JobsService, owner_filter
from tunelab.jobs.spec import JobCreate
from tunelab.jobs.store import ACTIVE, FileRow, JobRow
from tunelab.serve.protocol import ApiError
from tunelab.serve.state import ServerState, state_of
from tunelab.serve.store import ApiKey

files_router = APIRouter()
jobs_router = APIRouter()


def _svc(request: Request) -> tuple[ServerState, JobsService, ApiKey]:
    state = state_of(request)
    return state, request.app.state.jobs, state.authorise(request)


def _limit(v: str | None, default: int, most: int) -> int:
    if v is None:
        return default
    if not v.isdigit() or not 1 <= int(v) <= most:
        raise ApiError(400, f"limit must be an integer from 1 to {most}", param="limit")
    return int(v)


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}  # fmt: skip


# --- files --------------------------------------------------------------------------------------------------


def file_object(f: FileRow) -> dict[str, Any]:
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": f.purpose, "status": "processed", "status_details": None, "expires_at": None,
            "tunelab": {"kind": f.kind, "records": f.records, "sha256": f.sha256, "audit": f.audit}}  # fmt: skip


UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(upload.UPLOAD_PURPOSES)},
                    },
                }
            }
        },
    }
}


@files_router.post("/v1/files", openapi_extra=UPLOAD_SCHEMA)
async def create_file(request: Request) -> dict[str, Any]:
    state, svc, key = _svc(request)
    limit = key.max_file_bytes or state.cfg.jobs.max_file_bytes
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit + 64 * 1024:
        raise ApiError(413, f"the file is larger than this key's limit of {limit} bytes", param="file",
                       code="file_too_large")  # fmt: skip
    up = await upload.receive(request.headers.get("content-type", ""), request.stream(), files_dir(state.cfg), limit)
    row = await asyncio.to_thread(actions.add_file, state, svc, key, up.path, filename=up.filename,
                                  purpose=up.fields.get("purpose", ""), size=up.bytes, sha256=up.sha256)  # fmt: skip
    return file_object(row)


@files_router.get("/v1/files")
async def list_files(request: Request) -> dict[str, Any]:
    _, svc, key = _svc(request)
    q = request.query_params
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be asc or desc", param="order")
    rows, more = svc.jobs.files(owner_filter(key), purpose=q.get("purpose"), after=q.get("after"),
                                limit=_limit(q.get("limit"), 10000, 10000), ascending=order == "asc")  # fmt: skip
    return _page([file_object(f) for f in rows], more)


@files_router.get("/v1/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> dict[str, Any]:
    _, svc, key = _svc(request)
    return file_object(actions.own_file(svc, key, file_id))


@files_router.get("/v1/files/{file_id}/content")
async def file_content(request: Request, file_id: str) -> Any:
    _, svc, key = _svc(request)
    f = actions.own_file(svc, key, file_id)
    media = "text/csv" if f.path.endswith(".csv") else "application/jsonl"
    return FileResponse(f.path, media_type=media, filename=f.filename)


@files_router.delete("/v1/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict[str, Any]:
    _, svc, key = _svc(request)
    f = actions.own_file(svc, key, file_id)
    if svc.jobs.file_in_use(f.id):
        raise ApiError(409, "a job that has not finished uses this file; cancel it first", param="file_id",
                       code="file_in_use")  # fmt: skip
    svc.jobs.delete_file(f.id)
    Path(f.path).unlink(missing_ok=True)
    return {"id": f.id, "object": "file", "deleted": True}


# --- jobs ---------------------------------------------------------------------------------------------------


def job_object(j: JobRow) -> dict[str, Any]:
    s: dict[str, Any] = j.spec
    hp = {k: s["hyperparameters"][k] for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}
    method_hp = {**hp, **({"beta": s["hyperparameters"]["beta"]} if "beta" in s["hyperparameters"] else {})}
    mtype = s["method"]["type"]
    return {
        "id": j.id, "object": "fine_tuning.job", "created_at": j.created_at, "error": j.error,
        "fine_tuned_model": j.fine_tuned_model, "finished_at": j.finished_at, "hyperparameters": hp,
        "model": s["model"], "organization_id": j.owner, "result_files": j.result_files, "seed": s["seed"],
        "status": j.status, "trained_tokens": j.trained_tokens, "training_file": s["training_file"],
        "validation_file": s.get("validation_file"), "estimated_finish": j.estimated_finish if j.status == "running"
        else None, "integrations": [], "metadata": s.get("metadata"), "suffix": s.get("suffix"),
        "method": {"type": mtype, mtype: {"hyperparameters": method_hp}},
        # tunelab's own: what OpenAI's API does not give, the paired base-vs-tuned comparison, and the settings
        "tunelab": {"phase": j.phase, "steps": s["hyperparameters"]["steps"], "settings": s["tunelab"],
                    "comparison": (j.result or {}).get("comparison"), "training": (j.result or {}).get("summary"),
                    "run_dir": j.run_dir},
    }  # fmt: skip


@jobs_router.post("/v1/fine_tuning/jobs")
async def create_job(request: Request, body: JobCreate) -> dict[str, Any]:
    state, svc, key = _svc(request)
    return job_object(actions.create_job(state, svc, key, body))


@jobs_router.get("/v1/fine_tuning/jobs")
async def list_jobs(request: Request) -> dict[str, Any]:
    _, svc, key = _svc(request)
    q = request.query_params
    meta = {k[len("metadata[") : -1]: v for k, v in q.items() if k.startswith("metadata[") and k.endswith("]")}
    rows, more = svc.jobs.jobs(owner_filter(key), after=q.get("after"), limit=_limit(q.get("limit"), 20, 100),
                               metadata=meta or None)  # fmt: skip
    return {"object": "list", "data": [job_object(j) for j in rows], "has_more": more}


@jobs_router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve_job(request: Request, job_id: str) -> dict[str, Any]:
    _, svc, key = _svc(request)
    return job_object(actions.own_job(svc, key, job_id))


def _move(request: Request, job_id: str, frm: tuple[str, ...], to: str, verb: str) -> dict[str, Any]:
    _, svc, key = _svc(request)
    return job_object(actions.move_job(svc, key, job_id, frm, to, verb))


@jobs_router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return _move(request, job_id, ACTIVE, "cancelled", "cancel")


@jobs_router.post("/v1/fine_tuning/jobs/{job_id}/pause")
async def pause_job(request: Request, job_id: str) -> dict[str, Any]:
    return _move(request, job_id, ("queued", "running"), "paused", "pause")


@jobs_router.post("/v1/fine_tuning/jobs/{job_id}/resume")
async def resume_job(request: Request, job_id: str) -> dict[str, Any]:
    return _move(request, job_id, ("paused",), "queued", "resume")


def _job_list(request: Request, job_id: str, what: str, default: int, most: int) -> dict[str, Any]:
    _, svc, key = _svc(request)
    j = actions.own_job(svc, key, job_id)
    q = request.query_params
    lister = svc.jobs.events if what == "events" else svc.jobs.checkpoints
    data, more = lister(j.id, after=q.get("after"), limit=_limit(q.get("limit"), default, most))
    return _page(data, more)


@jobs_router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def job_events(request: Request, job_id: str) -> dict[str, Any]:
    return _job_list(request, job_id, "events", 20, 1000)


@jobs_router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def job_checkpoints(request: Request, job_id: str) -> dict[str, Any]:
    return _job_list(request, job_id, "checkpoints", 10, 100)
