"""The serving store: API keys (salted hashes only) and the usage ledger, in one embedded SQLite file.

`$TUNELAB_HOME/tunelab.db` by default. A key looks like `tl-<id>-<secret>`: the id finds the row, the secret
is checked against `sha256(salt || secret)` in constant time; the secret itself is printed once and never
stored. Every request served (or refused) is one ledger row: key, model, tokens, latency, status and the
guard decisions, so `tunelab usage` can sum tokens and cost per key and model.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError
from tunelab.paths import tunelab_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    salt TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL,
    rpm INTEGER,
    tokens_per_day INTEGER,
    models TEXT
);
CREATE TABLE IF NOT EXISTS usage (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    ts REAL NOT NULL,
    key_id TEXT,
    model TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    latency_s REAL,
    status INTEGER NOT NULL,
    guards TEXT
);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key_id, ts);
"""
# columns added after the first release: a store written by an older tunelab gets them on open
KEY_COLUMNS = {"admin": "INTEGER NOT NULL DEFAULT 0", "max_queued_jobs": "INTEGER", "max_file_bytes": "INTEGER"}
_KEY_SELECT = (
    "id, name, salt, hash, created, revoked, rpm, tokens_per_day, models, admin, max_queued_jobs, max_file_bytes"
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    created: float
    revoked: float | None
    rpm: int | None
    tokens_per_day: int | None
    models: list[str] | None
    admin: bool = False  # sees and manages every owner's files, jobs and models
    max_queued_jobs: int | None = None  # None: the server's default
    max_file_bytes: int | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "created": self.created,
            "revoked": self.revoked,
            "rpm": self.rpm,
            "tokens_per_day": self.tokens_per_day,
            "models": self.models,
            "admin": self.admin,
            "max_queued_jobs": self.max_queued_jobs,
            "max_file_bytes": self.max_file_bytes,
        }


def default_db() -> Path:
    return tunelab_home() / "tunelab.db"


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class Store:
    """Thread-safe access to the SQLite file (one connection, serialised; WAL so readers do not block)."""

    def __init__(self, path: str | Path | None = None) -> None:
        p = Path(path) if path else default_db()
        if str(p).startswith("sqlite:///"):
            p = Path(str(p)[len("sqlite:///") :])
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(p, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(keys)")}
            for col, decl in KEY_COLUMNS.items():
                if col not in have:
                    self._db.execute(f"ALTER TABLE keys ADD COLUMN {col} {decl}")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open the store: {e}", file=p, field="store") from None
        self.path = p
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error) for tables beside the keys."""
        return self._tx()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read, serialised with the writes."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        self._db.close()

    # --- keys ---------------------------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tokens_per_day: int | None = None,
        models: list[str] | None = None,
        admin: bool = False,
        max_queued_jobs: int | None = None,
        max_file_bytes: int | None = None,
    ) -> tuple[str, str]:
        """(id, key): the key is returned once and only its salted hash is stored."""
        if not name.strip():
            raise ConfigError("a key needs a name", field="--name")
        kid, secret, salt = secrets.token_hex(4), secrets.token_urlsafe(24), secrets.token_hex(16)
        with self._tx() as db:
            db.execute(
                "INSERT INTO keys (id, name, salt, hash, created, rpm, tokens_per_day, models, admin, "
                "max_queued_jobs, max_file_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    kid,
                    name,
                    salt,
                    _hash(salt, secret),
                    time.time(),
                    rpm,
                    tokens_per_day,
                    json.dumps(models) if models else None,
                    int(admin),
                    max_queued_jobs,
                    max_file_bytes,
                ),
            )
        return kid, f"tl-{kid}-{secret}"

    def _row(self, r: tuple[Any, ...]) -> ApiKey:
        return ApiKey(r[0], r[1], r[4], r[5], r[6], r[7], json.loads(r[8]) if r[8] else None, bool(r[9]), r[10], r[11])

    def list_keys(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_KEY_SELECT} FROM keys ORDER BY created").fetchall()
        return [self._row(r) for r in rows]

    def revoke(self, kid: str) -> bool:
        with self._tx() as db:
            cur = db.execute("UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), kid))
            return cur.rowcount == 1

    def verify(self, key: str) -> ApiKey | None:
        """The key's record when `key` is valid and not revoked, else None."""
        parts = key.split("-", 2)
        if len(parts) != 3 or parts[0] != "tl":
            return None
        with self._lock:
            r = self._db.execute(f"SELECT {_KEY_SELECT} FROM keys WHERE id = ?", (parts[1],)).fetchone()
        if r is None or r[5] is not None:
            return None
        if not hmac.compare_digest(_hash(r[2], parts[2]), r[3]):
            return None
        return self._row(r)

    # --- ledger -------------------------------------------------------------------------------------------

    def record(
        self,
        *,
        request_id: str,
        key_id: str | None,
        model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float | None,
        status: int,
        guards: list[dict[str, Any]] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO usage (request_id, ts, key_id, model, prompt_tokens, completion_tokens, latency_s, "
                "status, guards) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    request_id,
                    time.time(),
                    key_id,
                    model,
                    prompt_tokens,
                    completion_tokens,
                    latency_s,
                    status,
                    json.dumps(guards or []),
                ),
            )

    def tokens_since(self, key_id: str, since: float) -> int:
        with self._lock:
            r = self._db.execute(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage WHERE key_id = ? AND ts >= ?",
                (key_id, since),
            ).fetchone()
        return int(r[0])

    def usage_rows(self, since: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT request_id, ts, key_id, model, prompt_tokens, completion_tokens, latency_s, status, guards "
                "FROM usage WHERE ts >= ? ORDER BY n",
                (since or 0.0,),
            ).fetchall()
        cols = ("request_id", "ts", "key_id", "model", "prompt_tokens", "completion_tokens", "latency_s", "status")
        return [{**dict(zip(cols, r[:8], strict=True)), "guards": json.loads(r[8] or "[]")} for r in rows]

    def guard_decisions(self, limit: int = 20, key_id: str | None = None) -> list[dict[str, Any]]:
        """The guards' decisions of the latest `limit` requests that had any (only `key_id`'s, when given), newest
        first: one row per decision, with the request's time, key name, model and status."""
        sql = ("SELECT u.request_id, u.ts, k.name, u.model, u.status, u.guards FROM usage u "
               "LEFT JOIN keys k ON k.id = u.key_id WHERE u.guards != '[]'")  # fmt: skip
        args: tuple[Any, ...] = ()
        if key_id is not None:
            sql, args = sql + " AND u.key_id = ?", (key_id,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY u.n DESC LIMIT ?", (*args, limit)).fetchall()
        out = []
        for rid, ts, name, model, status, guards in rows:
            for d in json.loads(guards or "[]"):
                out.append({"request_id": rid, "ts": ts, "key_name": name, "model": model, "status": status, **d})
        return out

    def usage_summary(
        self, prices: dict[str, dict[str, float]] | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost per (key, model); prices per model in currency units per 1,000 tokens."""
        with self._lock:
            rows = self._db.execute(
                "SELECT u.key_id, k.name, u.model, COUNT(*), SUM(u.status = 200), SUM(u.prompt_tokens), "
                "SUM(u.completion_tokens) FROM usage u LEFT JOIN keys k ON k.id = u.key_id WHERE u.ts >= ? "
                "GROUP BY u.key_id, u.model ORDER BY u.key_id, u.model",
                (since or 0.0,),
            ).fetchall()
        out = []
        for kid, name, model, n, ok, pt, ct in rows:
            price = (prices or {}).get(model or "", {})
            cost = (pt or 0) / 1000 * price.get("input_per_1k", 0.0) + (ct or 0) / 1000 * price.get(
                "output_per_1k", 0.0
            )
            out.append(
                {
                    "key_id": kid,
                    "key_name": name,
                    "model": model,
                    "requests": n,
                    "ok": int(ok or 0),
                    "prompt_tokens": int(pt or 0),
                    "completion_tokens": int(ct or 0),
                    "cost": cost,
                }
            )
        return out
