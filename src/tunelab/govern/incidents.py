"""The incident log: what the serving guards decided, read from the serving store's usage ledger.

Every served request is a ledger row with the guards' decisions (injection, PII, moderation, leakage: block,
redact or flag). The log counts them by guard, action and model, and keeps the first samples of each guard:
when, which model, what was decided and why (score, categories, PII types), and the start of the text with
personal data redacted (again, whatever the server kept). The store is opened read-only.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.data.pii import redact
from tunelab.errors import ConfigError
from tunelab.paths import tunelab_home

SAMPLES_PER_GUARD = 5


def default_store() -> Path:
    return tunelab_home() / "tunelab.db"


def incident_log(store: Path, model: str | None = None, since: float | None = None) -> dict[str, Any]:
    """Counts and samples of the guards' decisions in `store` (only requests for `model`, when given)."""
    if not store.is_file():
        raise ConfigError("no serving store at this path (serve.yaml's `store`, default $TUNELAB_HOME/tunelab.db)",
                          file=store, field="--store")  # fmt: skip
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT request_id, ts, model, status, guards FROM usage WHERE ts >= ? ORDER BY n", (since or 0.0,)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise ConfigError(f"cannot read the usage ledger: {e}", file=store, field="--store") from None
    by_guard: Counter[str] = Counter()
    by_action: Counter[str] = Counter()
    by_model: Counter[str] = Counter()
    samples: dict[str, list[dict[str, Any]]] = {}
    requests = 0
    for rid, ts, m, status, guards in rows:
        if model is not None and m != model:
            continue
        requests += 1
        for d in json.loads(guards or "[]"):
            g, action = str(d.get("guard")), str(d.get("action"))
            by_guard[g] += 1
            by_action[action] += 1
            by_model[str(m)] += 1
            if len(samples.setdefault(g, [])) < SAMPLES_PER_GUARD:
                text = d.get("sample")
                samples[g].append({
                    "request_id": rid, "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)), "model": m,
                    "http_status": status, "action": action,
                    "why": {k: v for k, v in d.items() if k not in ("guard", "action", "sample")},
                    "sample": redact(text)[0] if isinstance(text, str) else None,
                })  # fmt: skip
    return {"store": str(store), "model": model, "requests": requests, "total": sum(by_guard.values()),
            "by_guard": dict(by_guard), "by_action": dict(by_action), "by_model": dict(by_model),
            "samples": samples}  # fmt: skip
