"""Checkpoints that are complete or absent, never half-written.

A checkpoint is a directory `checkpoints/step-000012/` holding the trainable weights (safetensors), the
optimizer and scheduler states, every process's RNG states, and `state.json` (step, counters, the loss
curve so far). It is written into a temp directory, every file fsynced, and a `MANIFEST` with each file's
sha256 and size written last; then the directory is renamed into place. Loading verifies the manifest and
falls back to the previous checkpoint when the newest is truncated or corrupted.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_dir, sha256_file

MANIFEST = "MANIFEST"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


@dataclass
class Found:
    path: Path
    step: int
    skipped: list[tuple[Path, str]]  # newer checkpoints that failed verification, with why


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def save(root: Path, step: int, write: Callable[[Path], None], keep_last: int) -> Path:
    """`write(tmp_dir)` puts the files in; the manifest and the rename make the checkpoint exist."""
    final = step_dir(root, step)
    with atomic_dir(final) as tmp:
        write(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "files": {str(p.relative_to(tmp)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    prune(root, keep_last)
    return final


def verify(path: Path) -> str | None:
    """None when every file in the manifest is present with its size and sha256; else what is wrong."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return "no MANIFEST (the write never finished)"
    except (ValueError, KeyError, TypeError):
        return "MANIFEST is not valid"
    for name, meta in files.items():
        p = path / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != meta["bytes"]:
            return f"{name} has {p.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if sha256_file(p) != meta["sha256"]:
            return f"{name} does not match its sha256"
    return None


def listing(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_good(root: Path) -> Found | None:
    """The newest checkpoint that verifies; the ones skipped on the way are reported."""
    skipped: list[tuple[Path, str]] = []
    for step, path in reversed(listing(root)):
        problem = verify(path)
        if problem is None:
            return Found(path, step, skipped)
        skipped.append((path, problem))
    return None


def prune(root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints; stale temp dirs of interrupted writes go too."""
    steps = listing(root)
    for _, path in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(path, ignore_errors=True)
    for p in root.glob(".step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def read_state(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / "state.json").read_text())
    return data
