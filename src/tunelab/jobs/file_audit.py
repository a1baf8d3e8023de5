"""The audit a job will run, run ahead of it on an uploaded file: the same held-out split (same seed), the
model's tokenizer for lengths and the loss mask, the server's data policy, the file's datacard (licence and
source). Written beside the file (`files/<id>.audit/`) so a page can show it and offer its quarantine."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tunelab.data.tasks import read_datacard
from tunelab.fsutil import atomic_write_json, atomic_write_jsonl
from tunelab.jobs.prepare import held_out_indices, iter_lines
from tunelab.jobs.store import FileRow

MAX_LENGTH = 1024  # TunelabExtras.max_length's default: what a job started from the page trains with


def audit_dir(f: FileRow) -> Path:
    return Path(f.path).with_suffix(".audit")


def seed_of(f: FileRow) -> int:
    """The split's seed for a file: fixed by its bytes, so the audit's held-out part is the job's."""
    return int(f.sha256[:8], 16) % (2**31)


def run_file_audit(f: FileRow, tokenizer: Any, rows: list[int] | None = None, *, policy: Any = None) -> dict[str, Any]:
    """Audit file `f` as its job will; `rows[i]` is the uploaded row that line i+1 of the file came from, so the
    quarantine names rows the person can find in their own spreadsheet."""
    from tunelab.data.audit import run_audit
    from tunelab.data.licence import DataPolicy

    out = audit_dir(f)
    src = Path(f.path)
    h = held_out_indices(iter_lines(src), seed_of(f))
    index: dict[str, list[int]] = {"train": [], "held-out": []}
    card = read_datacard(src)
    with tempfile.TemporaryDirectory(prefix="tunelab-file-audit-") as d:
        tp, ep = Path(d) / "train.jsonl", Path(d) / "held-out.jsonl"
        with open(tp, "wb") as to_train, open(ep, "wb") as to_held:  # one pass: each line to its side
            for i, ln in enumerate(iter_lines(src)):
                (to_held if i in h else to_train).write(ln + b"\n")
                index["held-out" if i in h else "train"].append(i)
        r = run_audit([tp], [ep] if h else [], out, policy=policy or DataPolicy(), tokenizer=tokenizer,
                      max_length=MAX_LENGTH, keep_records=False, workers=1, datacard=card).report  # fmt: skip
    train, held = index["train"], index["held-out"]
    r["split"] = {"seed": seed_of(f), "train": len(train), "held_out": len(held)}
    q = out / "quarantine.jsonl"
    found = [json.loads(x) for x in q.read_text().splitlines() if x.strip()] if q.is_file() else []
    for e in found:
        part = Path(str(e.get("file", ""))).stem
        k = int(e.get("line") or 0) - 1
        if part in index and 0 <= k < len(index[part]):
            i = index[part][k]
            e["row"] = rows[i] if rows and i < len(rows) else i + 1
        e["file"] = f.filename
    atomic_write_jsonl(q, found)
    atomic_write_json(out / "audit.json", r)
    return r


def read_file_audit(f: FileRow) -> dict[str, Any] | None:
    try:
        v = json.loads((audit_dir(f) / "audit.json").read_text())
    except (OSError, ValueError):
        return None
    return v if isinstance(v, dict) else None
