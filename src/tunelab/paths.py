"""Where tunelab keeps things on disk."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path


def tunelab_home() -> Path:
    """`$TUNELAB_HOME`, else `$XDG_CACHE_HOME/tunelab`, else `~/.cache/tunelab`."""
    env = os.environ.get("TUNELAB_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "tunelab"


def new_run_dir(name: str, root: Path | None = None) -> Path:
    """A fresh `runs/<name>-<UTC timestamp>` path (not created)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = (root or Path("runs")) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path
