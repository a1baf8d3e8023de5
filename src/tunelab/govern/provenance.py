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


def chain_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's inputs and outputs (canonical JSON): what the run consumed and made. Entries
    added later (exports, the report's hash) change the manifest file but not this digest."""
    import hashlib
    import json

    body = json.dumps({"inputs": manifest.get("inputs", {}), "outputs": manifest.get("outputs", [])},
                      sort_keys=True, separators=(",", ":"))  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()


def _update(run_dir: Path, change: Any) -> None:
    import json

    path = run_dir / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    atomic_write_json(path, data)


def record_outputs(run_dir: Path, paths: list[Path]) -> None:
    """Add (or re-hash) outputs written after the manifest, e.g. a job's evaluation after its training."""
    rows = file_entries(paths, run_dir)

    def change(m: dict[str, Any]) -> None:
        new = {r["path"] for r in rows}
        m["outputs"] = [r for r in m.get("outputs", []) if r["path"] not in new] + rows

    _update(run_dir, change)


def record_report(run_dir: Path, report: Path) -> None:
    """The report's sha256 (written after the manifest, from it; rewritten whenever the report is rebuilt)."""
    entry = file_entries([report], run_dir)[0]
    _update(run_dir, lambda m: m.__setitem__("report", entry))
