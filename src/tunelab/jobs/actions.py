"""What a key can do with files and jobs, whatever asked: the REST routes (OpenAI's shapes) and the web pages
both call these, so a rule (ownership, validation, quotas, the held-out split) lives in one place."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from tunelab.data.tasks import datacard_path
from tunelab.errors import DataError
from tunelab.jobs import files as upload
from tunelab.jobs.paths import files_dir, run_dir
from tunelab.jobs.prepare import held_out_count
from tunelab.jobs.service import JobsService
from tunelab.jobs.spec import JobCreate, model_name, resolve
from tunelab.jobs.store import FileRow, JobRow, new_id
from tunelab.serve.protocol import ApiError
from tunelab.serve.state import ServerState
from tunelab.serve.store import ApiKey


def own_file(svc: JobsService, key: ApiKey, fid: str) -> FileRow:
    f = svc.jobs.file(fid)
    if f is None or (not key.admin and f.owner != key.id):
        raise ApiError(404, f"no such file: {fid}", param="file_id", code="file_not_found", type="not_found_error")
    return f


def own_job(svc: JobsService, key: ApiKey, jid: str) -> JobRow:
    j = svc.jobs.job(jid)
    if j is None or (not key.admin and j.owner != key.id):
        raise ApiError(404, f"no such fine-tuning job: {jid}", param="fine_tuning_job_id", code="job_not_found",
                       type="not_found_error")  # fmt: skip
    return j


def data_error(e: DataError, filename: str) -> ApiError:
    parts = (f"line {e.line}" if e.line else "", f"field {e.field}" if e.field else "")
    where = ", ".join(x for x in parts if x)
    return ApiError(400, f"invalid file {filename}: {where + ': ' if where else ''}{e.message}",
                    param=e.field or "file", code="invalid_file")  # fmt: skip


def add_file(
    state: ServerState, svc: JobsService, key: ApiKey, tmp: Path, *, filename: str, purpose: str, size: int,
    sha256: str, datacard: dict[str, Any] | None = None,
) -> FileRow:  # fmt: skip
    """Validate the temp file `tmp` (in the files directory), audit it and keep it as a file of `key`.
    On any error `tmp` is removed and nothing is recorded. `datacard` (licence, source) goes beside it."""
    import yaml

    from tunelab.fsutil import atomic_write_text

    try:
        if purpose not in upload.UPLOAD_PURPOSES:
            raise ApiError(400, f"purpose must be one of {', '.join(upload.UPLOAD_PURPOSES)} (got {purpose!r})",
                           param="purpose")  # fmt: skip
        try:
            checked = upload.validate(tmp, filename)
        except DataError as e:
            raise data_error(e, filename) from None
        fid = new_id("file")
        final = files_dir(state.cfg) / f"{fid}.jsonl"
        audit = _audit(tmp, checked.kind)
        if datacard:
            atomic_write_text(datacard_path(final), yaml.safe_dump(datacard, sort_keys=False))
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    row = FileRow(fid, key.id, purpose, filename, size, int(time.time()), str(final), sha256, checked.kind,
                  checked.records, audit)  # fmt: skip
    svc.jobs.add_file(row)
    return row


def _audit(path: Path, kind: str) -> dict[str, Any] | None:
    """tunelab's data audit of a chat file (schema, duplicates, PII, diversity), summed up for the file object."""
    if kind != "chat":
        return None
    import tempfile

    from tunelab.data.audit import run_audit
    from tunelab.data.licence import DataPolicy

    with tempfile.TemporaryDirectory(prefix="tunelab-upload-audit-") as d:
        r = run_audit([path], [], Path(d), policy=DataPolicy(), keep_records=False, workers=1).report
    return {k: r.get(k) for k in ("records_valid", "quarantined", "duplicates", "pii", "warnings")}


def training_records(n: int, has_validation: bool) -> int:
    """What trains: the file, less the held-out split when no validation file was given (prepare.split)."""
    return n if has_validation else n - held_out_count(n)


def create_job(state: ServerState, svc: JobsService, key: ApiKey, body: JobCreate) -> JobRow:
    host = state.host
    if body.model != host.name:
        raise ApiError(404, f"model {body.model!r} cannot be fine-tuned here; this server fine-tunes {host.name!r}",
                       param="model", code="model_not_found")  # fmt: skip
    mtype = body.method_type()
    want = "preference" if mtype == "dpo" else "chat"
    files: dict[str, FileRow] = {}
    for param, fid in (("training_file", body.training_file), ("validation_file", body.validation_file)):
        if fid is None:
            continue
        f = svc.jobs.file(fid)
        if f is None or (not key.admin and f.owner != key.id):
            raise ApiError(400, f"file {fid!r} does not exist", param=param, code="invalid_file")
        if f.purpose != "fine-tune":
            raise ApiError(400, f"file {fid!r} has purpose {f.purpose!r}, not 'fine-tune'", param=param,
                           code="invalid_file")  # fmt: skip
        if f.kind != want:
            raise ApiError(400, f"file {fid!r} holds {f.kind} records; method {mtype!r} trains on {want} records",
                           param=param, code="invalid_file")  # fmt: skip
        files[param] = f
    quota = key.max_queued_jobs or state.cfg.jobs.max_queued_jobs
    if svc.jobs.active_jobs(key.id) >= quota:
        raise ApiError(429, f"this key already has {quota} jobs queued or running", code="quota_exceeded",
                       type="rate_limit_exceeded")  # fmt: skip
    n_train = training_records(files["training_file"].records or 0, body.validation_file is not None)
    jid = new_id("ftjob")
    seed = body.seed if body.seed is not None else random.SystemRandom().randrange(2**31)
    spec: dict[str, Any] = {
        "id": jid, "model": body.model, "base_spec": state.cfg.model, "owner_name": key.name,
        "training_file": body.training_file, "validation_file": body.validation_file,
        "method": {"type": mtype}, "hyperparameters": resolve(body, n_train), "suffix": body.suffix, "seed": seed,
        "metadata": body.metadata, "tunelab": body.tunelab.model_dump(),
        "fine_tuned_model": model_name(host.name, key.name, body.suffix, jid),
    }  # fmt: skip
    job = JobRow(jid, key.id, key.name, int(time.time()), spec, "queued", "train", str(run_dir(state.cfg, jid)))
    svc.jobs.add_job(job)
    svc.jobs.event(jid, f"Created fine-tuning job: {jid}")
    svc.jobs.event(jid, f"Validating training file: {body.training_file}")
    svc.jobs.event(jid, f"Job queued: {spec['hyperparameters']['steps']} steps of {n_train} training records",
                   data=spec["hyperparameters"])  # fmt: skip
    return svc.jobs.job(jid) or job


def move_job(svc: JobsService, key: ApiKey, job_id: str, frm: tuple[str, ...], to: str, verb: str) -> JobRow:
    """Cancel, pause or resume: only from the states `frm`, else a 400 naming the state it is in."""
    j = own_job(svc, key, job_id)
    extra: dict[str, Any] = {"finished_at": int(time.time())} if to == "cancelled" else {}
    if not svc.jobs.transition(j.id, frm, status=to, **extra):
        raise ApiError(400, f"cannot {verb} a job that is {j.status}", param="fine_tuning_job_id",
                       code="invalid_job_state")  # fmt: skip
    svc.jobs.event(j.id, {"cancelled": "Job cancelled", "paused": "Job paused", "queued": "Job resumed"}[to])
    return svc.jobs.job(j.id) or j
