"""Jobs, files, events and checkpoints in the serving store's SQLite file (tables beside the keys and ledger).

The API process writes files and jobs and flags cancels and pauses; the worker process claims queued jobs,
moves them through their states and writes events and checkpoints. Both open the same file (WAL), and every
change of state is one transaction, so a crash of either leaves each job in a state the next worker reads.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from tunelab.serve.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    kind TEXT,
    records INTEGER,
    audit TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    owner TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT 'train',
    run_dir TEXT NOT NULL,
    error TEXT,
    fine_tuned_model TEXT,
    started_at INTEGER,
    finished_at INTEGER,
    trained_tokens INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    requested TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    events_offset INTEGER NOT NULL DEFAULT 0,
    estimated_finish INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, n);
CREATE TABLE IF NOT EXISTS job_events (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    type TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, n);
CREATE TABLE IF NOT EXISTS job_checkpoints (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    UNIQUE (job_id, step)
);
"""

ACTIVE = ("validating_files", "queued", "running", "paused")
FINAL = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass
class FileRow:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    path: str
    sha256: str
    kind: str | None
    records: int | None
    audit: dict[str, Any] | None


@dataclass
class JobRow:
    id: str
    owner: str
    owner_name: str
    created_at: int
    spec: dict[str, Any]
    status: str
    phase: str
    run_dir: str
    error: dict[str, Any] | None = None
    fine_tuned_model: str | None = None
    started_at: int | None = None
    finished_at: int | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    requested: str | None = None  # "cancel" | "pause": asked of the worker, not yet done
    attempts: int = 0
    events_offset: int = 0
    estimated_finish: int | None = None


_FILE_COLS = "id, owner, purpose, filename, bytes, created_at, path, sha256, kind, records, audit"
_JOB_COLS = (
    "id, owner, owner_name, created_at, spec, status, phase, run_dir, error, fine_tuned_model, started_at, "
    "finished_at, trained_tokens, result_files, result, requested, attempts, events_offset, estimated_finish"
)
_JSON_JOB = {"spec", "error", "result_files", "result"}


def _file(r: tuple[Any, ...]) -> FileRow:
    return FileRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], json.loads(r[10]) if r[10] else None)


def columns(cols: str, json_cols: set[str], r: tuple[Any, ...]) -> dict[str, Any]:
    """A row as {column: value}, the JSON columns decoded."""
    names = [c.strip() for c in cols.split(",")]
    return {c: (json.loads(v) if c in json_cols and v is not None else v) for c, v in zip(names, r, strict=True)}


def create_tables(store: Store, schema: str) -> None:
    with store.transaction() as db:
        for stmt in schema.split(";"):
            if stmt.strip():
                db.execute(stmt)


def _job(r: tuple[Any, ...]) -> JobRow:
    return JobRow(**columns(_JOB_COLS, _JSON_JOB, r))


class JobStore:
    """The jobs tables, on the connection (and lock) of a serving `Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        create_tables(store, SCHEMA)

    def _q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.store.query(sql, args)

    # --- files --------------------------------------------------------------------------------------------

    def add_file(self, f: FileRow) -> None:
        with self.store.transaction() as db:
            db.execute(
                f"INSERT INTO files ({_FILE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (f.id, f.owner, f.purpose, f.filename, f.bytes, f.created_at, f.path, f.sha256, f.kind, f.records,
                 json.dumps(f.audit) if f.audit is not None else None),
            )  # fmt: skip

    def file(self, fid: str) -> FileRow | None:
        rows = self._q(f"SELECT {_FILE_COLS} FROM files WHERE id = ?", (fid,))
        return _file(rows[0]) if rows else None

    def files(
        self, owner: str | None, *, purpose: str | None = None, after: str | None = None, limit: int = 10000,
        ascending: bool = False,
    ) -> tuple[list[FileRow], bool]:  # fmt: skip
        where, args = self._page(owner, after, "files", ascending)
        if purpose:
            where.append("purpose = ?")
            args.append(purpose)
        order = "ASC" if ascending else "DESC"
        rows = self._q(
            f"SELECT {_FILE_COLS} FROM files WHERE {' AND '.join(where) or '1'} ORDER BY n {order} LIMIT ?",
            (*args, limit + 1),
        )
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, fid: str) -> None:
        with self.store.transaction() as db:
            db.execute("DELETE FROM files WHERE id = ?", (fid,))

    def file_in_use(self, fid: str) -> bool:
        rows = self._q(
            f"SELECT spec FROM jobs WHERE status IN ({','.join('?' * len(ACTIVE))})", ACTIVE
        )
        return any(fid in (json.loads(r[0]).get("training_file"), json.loads(r[0]).get("validation_file"))
                   for r in rows)  # fmt: skip

    # --- jobs ---------------------------------------------------------------------------------------------

    def add_job(self, j: JobRow) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, owner, owner_name, created_at, spec, status, phase, run_dir) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (j.id, j.owner, j.owner_name, j.created_at, json.dumps(j.spec), j.status, j.phase, j.run_dir),
            )

    def job(self, jid: str) -> JobRow | None:
        rows = self._q(f"SELECT {_JOB_COLS} FROM jobs WHERE id = ?", (jid,))
        return _job(rows[0]) if rows else None

    def jobs(
        self, owner: str | None, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> tuple[list[JobRow], bool]:
        where, args = self._page(owner, after, "jobs", False)
        rows = self._q(
            f"SELECT {_JOB_COLS} FROM jobs WHERE {' AND '.join(where) or '1'} ORDER BY n DESC", tuple(args)
        )
        out = [_job(r) for r in rows]
        if metadata:
            out = [j for j in out if all((j.spec.get("metadata") or {}).get(k) == v for k, v in metadata.items())]
        return out[:limit], len(out) > limit

    def _page(self, owner: str | None, after: str | None, table: str, ascending: bool) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if after:
            where.append(f"n {'>' if ascending else '<'} COALESCE((SELECT n FROM {table} WHERE id = ?), -1)")
            args.append(after)
        return where, args

    def active_jobs(self, owner: str) -> int:
        rows = self._q(
            f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ({','.join('?' * len(ACTIVE))})",
            (owner, *ACTIVE),
        )
        return int(rows[0][0])

    def update(self, jid: str, **values: Any) -> None:
        if not values:
            return
        sets = ", ".join(f"{k} = ?" for k in values)
        args = [json.dumps(v) if k in _JSON_JOB and v is not None else v for k, v in values.items()]
        with self.store.transaction() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*args, jid))

    def transition(self, jid: str, frm: tuple[str, ...], **values: Any) -> bool:
        """Set `values` only if the job's status is one of `frm` (atomic); True if it was."""
        sets = ", ".join(f"{k} = ?" for k in values)
        args = [json.dumps(v) if k in _JSON_JOB and v is not None else v for k, v in values.items()]
        with self.store.transaction() as db:
            cur = db.execute(
                f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({','.join('?' * len(frm))})", (*args, jid, *frm)
            )
            return cur.rowcount == 1

    def claim(self, exclude: set[str]) -> JobRow | None:
        """The oldest queued job, now running (one transaction: two workers never take the same job)."""
        with self.store.transaction() as db:
            rows = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY n").fetchall()
            ids = [r[0] for r in rows if r[0] not in exclude]
            if not ids:
                return None
            t = int(time.time())
            db.execute(
                "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1 "
                "WHERE id = ?",
                (t, ids[0]),
            )
        return self.job(ids[0])

    def running(self) -> list[JobRow]:
        return [_job(r) for r in self._q(f"SELECT {_JOB_COLS} FROM jobs WHERE status = 'running' ORDER BY n")]

    def status_counts(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self._q("SELECT status, COUNT(*) FROM jobs GROUP BY status")}

    def durations(self) -> list[tuple[str, float]]:
        rows = self._q(
            "SELECT status, finished_at - started_at FROM jobs WHERE finished_at IS NOT NULL AND started_at IS NOT NULL"
        )
        return [(str(s), float(d)) for s, d in rows]

    def fine_tuned(self, owner: str | None) -> list[tuple[str, str, int, str]]:
        """(model name, adapter dir, created, owner) of every servable model: succeeded jobs and checkpoints."""
        own = "AND j.owner = ?" if owner is not None else ""
        args = (owner,) if owner is not None else ()
        done = self._q(
            f"SELECT fine_tuned_model, run_dir, finished_at, owner_name FROM jobs j WHERE status = 'succeeded' "
            f"AND fine_tuned_model IS NOT NULL {own} ORDER BY n",
            args,
        )
        ckpts = self._q(
            f"SELECT c.name, c.path, c.created_at, j.owner_name FROM job_checkpoints c JOIN jobs j ON j.id = c.job_id "
            f"WHERE 1 {own} ORDER BY c.n",
            args,
        )
        return [(m, f"{d}/model", int(t or 0), o) for m, d, t, o in done] + [
            (m, p, int(t), o) for m, p, t, o in ckpts
        ]

    # --- events and checkpoints ---------------------------------------------------------------------------

    def event(self, jid: str, message: str, *, level: str = "info", type: str = "message", data: Any = None) -> None:
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO job_events (id, job_id, created_at, level, type, message, data) VALUES (?,?,?,?,?,?,?)",
                (new_id("ftevent"), jid, int(time.time()), level, type, message,
                 json.dumps(data) if data is not None else None),
            )  # fmt: skip

    def events(self, jid: str, *, after: str | None = None, limit: int = 20) -> tuple[list[dict[str, Any]], bool]:
        """Newest first, as OpenAI lists them; `after` is the last event id of the previous page."""
        rows = self._page_rows("job_events", "id, created_at, level, type, message, data", jid, after, limit)
        out = [
            {"id": i, "object": "fine_tuning.job.event", "created_at": t, "level": lv, "type": ty, "message": m,
             "data": json.loads(d) if d else None}
            for i, t, lv, ty, m, d in rows[:limit]
        ]  # fmt: skip
        return out, len(rows) > limit

    def _page_rows(self, table: str, cols: str, jid: str, after: str | None, limit: int) -> list[tuple[Any, ...]]:
        """A page of a job's rows of `table`, newest first, after the row `after`; limit + 1 rows (has_more)."""
        cond, args = (f"AND n < COALESCE((SELECT n FROM {table} WHERE id = ?), -1)", (after,)) if after else ("", ())
        return self._q(f"SELECT {cols} FROM {table} WHERE job_id = ? {cond} ORDER BY n DESC LIMIT ?",
                       (jid, *args, limit + 1))  # fmt: skip

    def events_since(self, jid: str, n: int = 0, limit: int = 500) -> list[tuple[int, dict[str, Any]]]:
        """(row number, event) of the events after row `n`, oldest first: what a live page has not shown yet."""
        rows = self._q(
            "SELECT n, id, created_at, level, type, message, data FROM job_events WHERE job_id = ? AND n > ? "
            "ORDER BY n LIMIT ?",
            (jid, n, limit),
        )
        return [(k, {"id": i, "created_at": t, "level": lv, "type": ty, "message": m,
                     "data": json.loads(d) if d else None}) for k, i, t, lv, ty, m, d in rows]  # fmt: skip

    def add_checkpoint(self, jid: str, step: int, name: str, path: str, metrics: dict[str, Any]) -> bool:
        with self.store.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO job_checkpoints (id, job_id, created_at, step, name, path, metrics) "
                "VALUES (?,?,?,?,?,?,?)",
                (new_id("ftckpt"), jid, int(time.time()), step, name, path, json.dumps(metrics)),
            )
            return cur.rowcount == 1

    def checkpoints(self, jid: str, *, after: str | None = None, limit: int = 10) -> tuple[list[dict[str, Any]], bool]:
        rows = self._page_rows("job_checkpoints", "id, created_at, step, name, metrics", jid, after, limit)
        out = [
            {"id": i, "object": "fine_tuning.job.checkpoint", "created_at": t, "fine_tuned_model_checkpoint": name,
             "fine_tuning_job_id": jid, "metrics": json.loads(m), "step_number": step}
            for i, t, step, name, m in rows[:limit]
        ]  # fmt: skip
        return out, len(rows) > limit
