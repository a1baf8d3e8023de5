"""Upload examples: a CSV or JSONL file streamed to disk under the key's limit, its columns chosen with a live
preview of the chat examples they become, its licence and source recorded; then the file is a fine-tune file of
the jobs service (`jobs.actions.add_file`, as `/v1/files` makes one) and its audit is run as its job will run it.

A file stays "staged" (`files/.staged-<id>.*`, the key's only) between the upload and the choice of columns;
a rejected upload leaves nothing, and nothing that was there before is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from tunelab.data.licence import OWNED
from tunelab.data.mapping import Mapping, Sniffed, convert, example, sniff
from tunelab.errors import DataError
from tunelab.fsutil import atomic_write_json, sha256_file
from tunelab.jobs import actions
from tunelab.jobs import files as upload
from tunelab.jobs.file_audit import run_file_audit
from tunelab.jobs.paths import files_dir
from tunelab.serve.protocol import ApiError
from tunelab.ui.web import Refused, Visitor, check_csrf, form, need, redirect, render

router = APIRouter(include_in_schema=False)
LICENCES = [
    (OWNED, "I own this data (I made it, or my organisation did)"),
    ("CC0-1.0", "CC0 1.0 (public domain)"),
    ("CC-BY-4.0", "CC BY 4.0 (attribution)"),
    ("MIT", "MIT"),
    ("Apache-2.0", "Apache 2.0"),
    ("BSD-3-Clause", "BSD 3-Clause"),
    ("other", "Another licence (type its SPDX id)"),
]
STAGED_MAX_S = 24 * 3600
DRAIN_MAX = 8 << 30  # bytes read and dropped after a refusal, so the browser gets the page, not a reset


def _limit(v: Visitor) -> int:
    return v.key.max_file_bytes or v.state.cfg.jobs.max_file_bytes


def size_text(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


def _page(v: Visitor, status: int = 200, error: str | None = None, values: dict[str, str] | None = None) -> Response:
    return render("upload.html", v, status, title="Upload examples", licences=LICENCES, error=error,
                  values=values or {}, limit=_limit(v), limit_text=size_text(_limit(v)))  # fmt: skip


@router.get("/upload")
async def upload_page(request: Request) -> Response:
    return _page(need(request))


def _staged(v: Visitor, sid: str) -> tuple[Path, dict[str, Any]]:
    d = files_dir(v.state.cfg)
    meta = d / f".staged-{sid}.json"
    if not sid.isalnum() or not meta.is_file():
        raise Refused(404, "There is no such upload (it may have been used or expired): upload the file again.")
    m = json.loads(meta.read_text())
    if m["owner"] != v.key.id:
        raise Refused(404, "There is no such upload (it may have been used or expired): upload the file again.")
    return d / f".staged-{sid}.data", m


def _sweep_staged(d: Path) -> None:
    """Staged uploads nobody finished within a day are removed."""
    for p in d.glob(".staged-*"):
        with contextlib.suppress(OSError):
            if time.time() - p.stat().st_mtime > STAGED_MAX_S:
                p.unlink()


@router.post("/upload")
async def receive_upload(request: Request) -> Response:
    v = need(request)
    d = files_dir(v.state.cfg)
    stream = request.stream()
    try:
        up = await upload.receive(request.headers.get("content-type", ""), stream, d, _limit(v))
    except ApiError as e:
        await _drain(stream)
        msg = (f"That file is larger than your limit of {size_text(_limit(v))}. Split it, or ask an admin for a "
               "higher limit." if e.status == 413 else e.message)  # fmt: skip
        return _page(v, e.status, msg)
    values = {k: up.fields.get(k, "") for k in ("licence", "licence_other", "source")}
    try:
        check_csrf(v, up.fields.get("csrf"))
        lic = values["licence_other"].strip() if values["licence"] == "other" else values["licence"]
        if not lic:
            raise DataError("choose the data's licence (or \"I own this data\")", field="licence")
        if not values["source"].strip():
            raise DataError("say where the data comes from (a URL, a system, a person)", field="source")
        await asyncio.to_thread(sniff, up.path, up.filename)  # refuse what cannot be read before staging it
    except (DataError, Refused) as e:
        up.path.unlink(missing_ok=True)
        if isinstance(e, Refused):
            raise
        return _page(v, 400, _say(e), values)
    sid = secrets.token_hex(12)
    up.path.rename(d / f".staged-{sid}.data")
    atomic_write_json(d / f".staged-{sid}.json", {
        "owner": v.key.id, "filename": up.filename, "bytes": up.bytes, "sha256": up.sha256, "licence": lic,
        "source": values["source"].strip(), "created": time.time()})  # fmt: skip
    await asyncio.to_thread(_sweep_staged, d)
    return redirect(f"/upload/{sid}")


async def _drain(stream: AsyncIterator[bytes]) -> None:
    """Read and drop the rest of a refused body (up to DRAIN_MAX bytes)."""
    n = 0
    with contextlib.suppress(Exception):
        async for chunk in stream:
            n += len(chunk)
            if n > DRAIN_MAX:
                return


def _say(e: DataError) -> str:
    where = ", ".join(x for x in (f"line {e.line}" if e.line else "", f"column or field “{e.field}”"
                                  if e.field and e.field not in ("file",) else "") if x)  # fmt: skip
    return f"{e.file + ': ' if e.file else ''}{where + ': ' if where else ''}{e.message}"


def _mapping(q: Any, s: Sniffed) -> Mapping:
    g = s.guess()
    if not any(q.get(k) is not None for k in ("input", "output", "label")):
        return g
    return Mapping(str(q.get("input") or ""), str(q.get("output") or ""), str(q.get("label") or ""),
                   str(q.get("system") or ""))  # fmt: skip


def _preview(s: Sniffed, m: Mapping | None) -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(s.sample, start=1):
        ex = example(row, m) if m else {"messages": json.loads(row["messages"])} if "messages" in row else row
        out.append({"n": i, "example": ex if isinstance(ex, dict) else None,
                    "problem": f"{ex[0]}: {ex[1]}" if isinstance(ex, tuple) else None})  # fmt: skip
    return out


@router.get("/upload/{sid}")
async def mapping_page(request: Request, sid: str) -> Response:
    v = need(request)
    path, meta = _staged(v, sid)
    return await _mapping_page(v, sid, path, meta, request.query_params)


async def _mapping_page(v: Visitor, sid: str, path: Path, meta: dict[str, Any], q: Any, status: int = 200,
                        error: str | None = None) -> Response:  # fmt: skip
    try:
        s = await asyncio.to_thread(sniff, path, meta["filename"])
    except DataError as e:
        return _page(v, 400, _say(e))
    m = None if s.ready else _mapping(q, s)
    return render("mapping.html", v, status, title="Choose the columns", sid=sid, meta=meta, sniffed=s,
                  mapping=asdict(m) if m else None, preview=_preview(s, m), error=error,
                  sample=s.sample)  # fmt: skip


@router.post("/upload/{sid}")
async def finish_upload(request: Request, sid: str) -> Response:
    v = need(request)
    path, meta = _staged(v, sid)
    q = await form(request, v)
    try:
        s = await asyncio.to_thread(sniff, path, meta["filename"])
        m = None if s.ready else _mapping(q, s)
        f = await asyncio.to_thread(_make_file, v, path, meta, s, m)
    except DataError as e:
        return await _mapping_page(v, sid, path, meta, q, 400, _say(e))
    except ApiError as e:
        return await _mapping_page(v, sid, path, meta, q, 400, e.message)
    for p in (path, path.with_suffix(".json")):
        p.unlink(missing_ok=True)
    return redirect(f"/files/{f.id}")


def _make_file(v: Visitor, path: Path, meta: dict[str, Any], s: Sniffed, m: Mapping | None) -> Any:
    d = files_dir(v.state.cfg)
    tmp = d / f".convert-{secrets.token_hex(8)}.jsonl"
    rejected = tmp.with_suffix(".rejected")
    try:
        done = convert(path, meta["filename"], s, m, tmp, rejected)
        card = {"licence": {"id": meta["licence"]}, "source": meta["source"], "owner": v.key.name,
                "original": {"filename": meta["filename"], "bytes": meta["bytes"], "sha256": meta["sha256"]},
                "columns": asdict(m) if m else "as uploaded (chat or completion records)",
                "rows_not_examples": done.quarantined}  # fmt: skip
        if meta["licence"] == OWNED:
            card["licence"]["owner_statement"] = f"{v.key.name} stated in the web app that they own this data"
        f = actions.add_file(v.state, v.svc, v.key, tmp, filename=meta["filename"], purpose="fine-tune",
                             size=tmp.stat().st_size, sha256=sha256_file(tmp), datacard=card)  # fmt: skip
        out = Path(f.path).with_suffix(".audit")
        out.mkdir(parents=True, exist_ok=True)
        rejected.replace(out / "conversion-quarantine.jsonl")
        atomic_write_json(Path(f.path).with_suffix(".rows.json"), done.rows)
        run_file_audit(f, v.state.host.tok, done.rows)
        return f
    finally:
        tmp.unlink(missing_ok=True)
        rejected.unlink(missing_ok=True)
