"""Exports of succeeded jobs (merged, GGUF, adapter) in the serving store's SQLite file, beside the jobs.

The API (or a web page) adds a queued export; the worker claims it, runs `tunelab export` as a child process
and records the outcome. An export belongs to its job's owner; its files live in `<run dir>/exports/<id>/`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tunelab.jobs.store import columns, create_tables, new_id
from tunelab.serve.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS job_exports (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    format TEXT NOT NULL,
    quantize TEXT NOT NULL,
    lora INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS job_exports_job ON job_exports (job_id, n);
CREATE INDEX IF NOT EXISTS job_exports_status ON job_exports (status, n)
"""
_COLS = "id, job_id, owner, created_at, format, quantize, lora, status, out_dir, started_at, finished_at, error, result"
_JSON = {"quantize", "error", "result"}


@dataclass
class ExportRow:
    id: str
    job_id: str
    owner: str
    created_at: int
    format: str
    quantize: list[str]
    lora: bool
    status: str  # queued | running | succeeded | failed
    out_dir: str
    started_at: int | None = None
    finished_at: int | None = None
    error: dict[str, Any] | None = None
    result: dict[str, Any] | None = field(default=None)  # parity per artifact and the files written


def _row(r: tuple[Any, ...]) -> ExportRow:
    vals = columns(_COLS, _JSON, r)
    vals["lora"] = bool(vals["lora"])
    return ExportRow(**vals)


class ExportStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        create_tables(store, SCHEMA)

    def add(self, job_id: str, owner: str, fmt: str, quantize: list[str], lora: bool, out_dir: str) -> ExportRow:
        eid = new_id("ftexport")
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO job_exports (id, job_id, owner, created_at, format, quantize, lora, status, out_dir) "
                "VALUES (?,?,?,?,?,?,?,?,?)",
                (eid, job_id, owner, int(time.time()), fmt, json.dumps(quantize), int(lora), "queued",
                 out_dir.replace("{id}", eid)),
            )  # fmt: skip
        row = self.get(eid)
        assert row is not None
        return row

    def get(self, eid: str) -> ExportRow | None:
        rows = self.store.query(f"SELECT {_COLS} FROM job_exports WHERE id = ?", (eid,))
        return _row(rows[0]) if rows else None

    def of_job(self, job_id: str, *, after: str | None = None, limit: int = 20) -> tuple[list[ExportRow], bool]:
        """Newest first; `after` is the last id of the previous page."""
        cond, args = ("AND n < COALESCE((SELECT n FROM job_exports WHERE id = ?), -1)", (after,)) if after else ("", ())
        rows = self.store.query(
            f"SELECT {_COLS} FROM job_exports WHERE job_id = ? {cond} ORDER BY n DESC LIMIT ?",
            (job_id, *args, limit + 1),
        )
        return [_row(r) for r in rows[:limit]], len(rows) > limit

    def set(self, eid: str, frm: tuple[str, ...], **values: Any) -> bool:
        """Set `values` only while the export's status is one of `frm` (atomic); True if it was."""
        sets = ", ".join(f"{k} = ?" for k in values)
        args = [json.dumps(v) if k in _JSON and v is not None else v for k, v in values.items()]
        with self.store.transaction() as db:
            cur = db.execute(
                f"UPDATE job_exports SET {sets} WHERE id = ? AND status IN ({','.join('?' * len(frm))})",
                (*args, eid, *frm),
            )
            return cur.rowcount == 1

    def claim(self) -> ExportRow | None:
        """The oldest queued export, now running (one transaction)."""
        with self.store.transaction() as db:
            rows = db.execute("SELECT id FROM job_exports WHERE status = 'queued' ORDER BY n LIMIT 1").fetchall()
            if not rows:
                return None
            db.execute("UPDATE job_exports SET status = 'running', started_at = ? WHERE id = ?",
                       (int(time.time()), rows[0][0]))  # fmt: skip
        return self.get(rows[0][0])

    def running(self) -> list[ExportRow]:
        return [_row(r) for r in self.store.query(f"SELECT {_COLS} FROM job_exports WHERE status = 'running'")]

    def active(self, job_id: str) -> int:
        rows = self.store.query(
            "SELECT COUNT(*) FROM job_exports WHERE job_id = ? AND status IN ('queued', 'running')", (job_id,)
        )
        return int(rows[0][0])

    def delete(self, eid: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM job_exports WHERE id = ?", (eid,))
