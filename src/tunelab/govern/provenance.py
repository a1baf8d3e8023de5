"""`manifest.json`: sha256 of every input and output of a run, plus tool versions."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json, sha256_file

_TOOLS = ("tunelab", "torch", "transformers", "peft", "tokenizers", "safetensors", "numpy")


def tool_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def file_entries(paths: list[Path], root: Path | None = None) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        if p.is_dir():
            rows += file_entries(sorted(q for q in p.rglob("*") if q.is_file()), root)
        elif p.is_file():
            shown = str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p)
            rows.append({"path": shown, "sha256": sha256_file(p), "bytes": p.stat().st_size})
    return rows


def write_manifest(run_dir: Path, inputs: dict[str, list[Path]], outputs: list[Path], extra: dict[str, Any]) -> None:
    manifest = {
        "inputs": {k: file_entries(v, run_dir) for k, v in inputs.items()},
        "outputs": file_entries(outputs, run_dir),
        "tools": tool_versions(),
        **extra,
    }
    atomic_write_json(run_dir / "manifest.json", manifest)
