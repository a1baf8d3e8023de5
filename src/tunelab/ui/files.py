"""The key's data: the list of uploaded files, each file's audit in plain language (red / amber / green, each
with words as well as a colour), its quarantine as a download, "redact and continue", and the Train button."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from pydantic import ValidationError

from tunelab.data.tasks import read_datacard
from tunelab.fsutil import atomic_write_json, atomic_write_parts, sha256_file
from tunelab.jobs import actions
from tunelab.jobs.file_audit import audit_dir, read_file_audit, run_file_audit, seed_of
from tunelab.jobs.paths import files_dir
from tunelab.jobs.service import owner_filter
from tunelab.jobs.spec import JobCreate
from tunelab.jobs.store import FileRow
from tunelab.serve.protocol import ApiError
from tunelab.ui.web import Refused, Visitor, form, need, redirect, render

router = APIRouter(include_in_schema=False)
SHOWN_ROWS = 50


def own_file(v: Visitor, fid: str) -> FileRow:
    try:
        f = actions.own_file(v.svc, v.key, fid)
    except ApiError:
        raise Refused(404, "There is no such file.") from None
    if f.purpose != "fine-tune":
        raise Refused(404, "There is no such file.")
    return f


@router.get("/files")
async def files_page(request: Request) -> Response:
    v = need(request)
    rows, _ = v.svc.jobs.files(owner_filter(v.key), purpose="fine-tune", limit=500)
    return render("files.html", v, title="Your data", files=[
        {"id": f.id, "name": f.filename, "records": f.records, "kind": f.kind,
         "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(f.created_at))} for f in rows])  # fmt: skip


def _quarantine(f: FileRow) -> list[dict[str, Any]]:
    """Rows not trained on: those that could not become examples, then those the audit set aside."""
    out: list[dict[str, Any]] = []
    d = audit_dir(f)
    for name in ("conversion-quarantine.jsonl", "quarantine.jsonl"):
        p = d / name
        if p.is_file():
            for line in p.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    e = json.loads(line)
                    out.append({"row": e.get("row", e.get("line")), "field": e.get("field"), "reason": e.get("reason"),
                                "raw": e.get("raw")})  # fmt: skip
    return out


def checks(f: FileRow, r: dict[str, Any], quarantined: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The audit as a person reads it: one line per check, a status word (never colour alone), and a why."""

    def check(name: str, status: str, text: str, why: str) -> dict[str, Any]:
        word = {"good": "OK", "warn": "Check", "bad": "Problem"}[status]
        return {"name": name, "status": status, "word": word, "text": text, "why": why}

    split = r.get("split") or {}
    usable = int(r.get("train_records_after_cleaning") or 0)
    held = split.get("held_out", 0)
    out = [check("Usable examples", "good" if usable >= 20 else "warn" if usable else "bad",
                 f"{usable} examples will train; {held} more are kept aside to test the model on.",
                 "Examples kept aside are never trained on: the two models are compared on them.")]  # fmt: skip
    nq = len(quarantined)
    reasons: dict[str, int] = {}
    for q in quarantined:
        why = str(q["reason"]).split(" (")[0]
        reasons[why] = reasons.get(why, 0) + 1
    out.append(check("Set aside", "good" if nq == 0 else "warn" if nq <= max(1, (f.records or 0) // 20) else "bad",
                     "No row was set aside." if not nq else f"{nq} row{'s' * (nq > 1)} set aside, not to train: " +
                     "; ".join(f"{n} x {k}" for k, n in sorted(reasons.items(), key=lambda x: -x[1])) + ".",
                     "A row is set aside when it cannot be read, lacks its input or answer, is too long for the "
                     "model, or repeats an example kept aside for testing."))  # fmt: skip
    dup = r.get("duplicates") or {}
    ex, near = int(dup.get("exact") or 0), int(dup.get("near") or 0)
    out.append(check("Duplicates", "good" if ex + near == 0 else "warn",
                     "No repeated examples." if ex + near == 0 else
                     f"{ex} exact and {near} near-duplicate examples (nearly the same text).",
                     "Repeated examples count more than once in training: the model leans towards them."))  # fmt: skip
    pii = (r.get("pii") or {}).get("counts") or {}
    out.append(check("Personal data", "good" if not pii else "warn",
                     "No personal data or secrets found." if not pii else "Found: " +
                     ", ".join(f"{n} x {k.replace('_', ' ').lower()}" for k, n in sorted(pii.items())) + ".",
                     "E-mail addresses, phone and card numbers, keys and the like. A tuned model can repeat what it "
                     "was trained on: redact them unless the task needs them."))  # fmt: skip
    cont = sum(int(c.get("contaminated") or 0) for c in (r.get("contamination") or {}).values())
    out.append(check("Overlap with the test examples", "good" if cont == 0 else "warn",
                     "No training example repeats one kept aside for testing." if cont == 0 else
                     f"{cont} test examples had a twin among the training rows; those rows were set aside.",
                     "If the model trained on the test questions, the comparison would flatter it."))  # fmt: skip
    lic = next((x for x in r.get("licence") or []), None) or {}
    st = lic.get("status", "unknown")
    out.append(check("Licence", {"allowed": "good", "unknown": "warn"}.get(st, "bad"),
                     {"allowed": f"{lic.get('id')} is allowed by this server's policy.",
                      "unknown": "No licence was recorded for this data.",
                      }.get(st, f"{lic.get('id')} is not allowed by this server's policy: training will stop at "
                                "the audit."),
                     "The server's data policy lists the licences it may train on; an admin sets it."))  # fmt: skip
    return out


@router.get("/files/{fid}")
async def file_page(request: Request, fid: str) -> Response:
    v = need(request)
    f = own_file(v, fid)
    r = read_file_audit(f)
    if r is None:  # a file made through the API: audit it now, as its job would
        rows = _rows(f)
        r = await asyncio.to_thread(run_file_audit, f, v.state.host.tok, rows)
    return _file_view(v, f, r)


def _file_view(v: Visitor, f: FileRow, r: dict[str, Any], status: int = 200, error: str | None = None) -> Response:
    q = _quarantine(f)
    return render("file.html", v, status, title=f"Data: {f.filename}", f=f, audit=r, checks=checks(f, r, q),
                  quarantined=q[:SHOWN_ROWS], n_quarantined=len(q), card=read_datacard(Path(f.path)) or {},
                  verdict=r.get("verdict"), reasons=r.get("reasons") or [],
                  pii=bool((r.get("pii") or {}).get("counts")), can_dpo=f.kind == "preference",
                  error=error)  # fmt: skip


def _rows(f: FileRow) -> list[int] | None:
    p = Path(f.path).with_suffix(".rows.json")
    try:
        v = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return v if isinstance(v, list) else None


@router.get("/files/{fid}/quarantine")
async def quarantine_download(request: Request, fid: str) -> Response:
    v = need(request)
    f = own_file(v, fid)
    rows = _quarantine(f)
    out = audit_dir(f) / "set-aside.jsonl"
    atomic_write_parts(out, (json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in rows))
    return FileResponse(out, media_type="application/jsonl", filename=f"{Path(f.filename).stem}-set-aside.jsonl")


@router.post("/files/{fid}/redact")
async def redact(request: Request, fid: str) -> Response:
    """A copy of the file with personal data replaced by placeholders (<EMAIL>...), audited; the original stays."""
    v = need(request)
    f = own_file(v, fid)
    await form(request, v)
    new = await asyncio.to_thread(_redacted_copy, v, f)
    return redirect(f"/files/{new.id}")


def _redacted_copy(v: Visitor, f: FileRow) -> FileRow:
    from tunelab.data.pii import redact as redact_text

    def scrub(x: Any) -> Any:
        if isinstance(x, str):
            return redact_text(x)[0]
        if isinstance(x, list):
            return [scrub(y) for y in x]
        if isinstance(x, dict):
            return {k: scrub(y) if k != "role" else y for k, y in x.items()}
        return x

    tmp = files_dir(v.state.cfg) / f".redact-{secrets.token_hex(8)}.jsonl"
    lines = (json.dumps(scrub(json.loads(ln)), ensure_ascii=False).encode() + b"\n"
             for ln in Path(f.path).read_bytes().splitlines() if ln.strip())  # fmt: skip
    atomic_write_parts(tmp, lines)
    card = dict(read_datacard(Path(f.path)) or {})
    card["redacted_from"] = {"file": f.id, "sha256": f.sha256, "how": "tunelab.data.pii.redact placeholders"}
    name = f"{Path(f.filename).stem} (redacted){Path(f.filename).suffix or '.jsonl'}"
    new = actions.add_file(v.state, v.svc, v.key, tmp, filename=name, purpose="fine-tune", size=tmp.stat().st_size,
                           sha256=sha256_file(tmp), datacard=card)  # fmt: skip
    rows = _rows(f)
    if rows is not None:
        atomic_write_json(Path(new.path).with_suffix(".rows.json"), rows)
    conv = audit_dir(f) / "conversion-quarantine.jsonl"
    if conv.is_file():
        audit_dir(new).mkdir(parents=True, exist_ok=True)
        (audit_dir(new) / "conversion-quarantine.jsonl").write_bytes(conv.read_bytes())
    run_file_audit(new, v.state.host.tok, rows)
    return new


@router.post("/files/{fid}/train")
async def train(request: Request, fid: str) -> Response:
    """One button: the recommended recipe (LoRA r=16, one pass over the data); "advanced" changes method, steps
    and rank. The job is the jobs service's, seeded so its held-out split is the one the audit showed."""
    v = need(request)
    f = own_file(v, fid)
    q = await form(request, v)
    method = str(q.get("method") or ("dpo" if f.kind == "preference" else "lora"))
    steps, rank = str(q.get("steps") or "").strip(), str(q.get("rank") or "").strip()
    card = read_datacard(Path(f.path)) or {}
    lic = (card.get("licence") or {}).get("id") if isinstance(card.get("licence"), dict) else card.get("licence")
    try:
        if method not in ("lora", "full", "dpo"):
            raise ValueError("method must be LoRA, full or DPO")
        if method == "dpo" and f.kind != "preference":
            raise ValueError("DPO trains on preference pairs (a chosen and a rejected answer per prompt); this "
                             "file holds chat examples")  # fmt: skip
        extras: dict[str, Any] = {"kind": "full" if method == "full" else "lora", "licence": lic}
        if steps:
            extras["max_steps"] = int(steps)
        if rank:
            extras["lora_rank"] = int(rank)
        if q.get("probes") == "on":
            extras["probes"] = ["safety", "bias", "hallucination"]
        body = JobCreate.model_validate({
            "model": v.state.host.name, "training_file": f.id, "seed": seed_of(f),
            "suffix": str(q.get("suffix") or "").strip() or None,
            "method": {"type": "dpo" if method == "dpo" else "supervised"}, "tunelab": extras})  # fmt: skip
        job = actions.create_job(v.state, v.svc, v.key, body)
    except (ValueError, ValidationError, ApiError) as e:
        msg = e.message if isinstance(e, ApiError) else _validation(e)
        return _file_view(v, f, read_file_audit(f) or {}, 400, msg)
    return redirect(f"/runs/{job.id}")


def _validation(e: Exception) -> str:
    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"] if x not in ("tunelab",))
            parts.append(f"{ {'max_steps': 'steps', 'lora_rank': 'rank'}.get(where, where)}: {err['msg']}")
        return "; ".join(parts)
    return str(e).replace("invalid literal for int() with base 10", "not a whole number")
