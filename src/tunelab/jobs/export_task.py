"""The worker's side of an export: the child command it runs, and what its files say once it ends.

`tunelab export` runs as a child process (llama.cpp's native code never runs inside the worker or the server),
with the job's run directory as its target, so the export is recorded in the run's manifest and report as one
made from the command line is. Exit 0: every parity gate passed; 1: a gate failed (files kept); else an error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tunelab.fsutil import read_json_object
from tunelab.jobs.export_store import ExportRow

LOG = "export.log"


def command(e: ExportRow, run_dir: Path, items: int) -> list[str]:
    cmd = [sys.executable, "-m", "tunelab", "export", str(run_dir), "--format", e.format, "--out", e.out_dir,
           "--limit", str(items)]  # fmt: skip
    if e.format == "gguf":
        cmd += ["--quantize", ",".join(e.quantize)]
        if e.lora:
            cmd.append("--lora")
    return cmd


def outcome(e: ExportRow, rc: int) -> tuple[str, dict[str, Any]]:
    """(status, values to store) of an export whose child ended with `rc`."""
    out = Path(e.out_dir)
    parity = read_json_object(out / "parity.json")
    manifest = read_json_object(out / "export.json")
    if rc in (0, 1) and parity is not None and manifest is not None:
        result = {"passed": bool(parity["passed"]), "items": parity.get("items"), "parity": summary(parity),
                  "files": files(out, manifest)}  # fmt: skip
        if rc == 0 and parity["passed"]:
            return "succeeded", {"result": result, "error": None}
        failures = [f"{k}: {'; '.join(v['gate']['failures'])}" for k, v in parity["results"].items()
                    if not v["gate"]["passed"]]  # fmt: skip
        msg = "a parity gate failed: " + " | ".join(failures)
        return "failed", {"result": result, "error": {"code": "parity_failed", "message": msg[:2000], "param": None}}
    why = last_error(out.parent / f"{e.id}.log")
    return "failed", {"error": {"code": "export_failed", "message": f"export stopped with exit code {rc}: {why}"}}


def summary(parity: dict[str, Any]) -> dict[str, Any]:
    """Per artifact, the figures a person reads: gate, top-1 agreement, KL, greedy agreement, accuracy change."""
    keep = ("top1_agreement", "mean_kl", "greedy_agreement", "prompt_tokens_equal", "reference_accuracy", "accuracy",
            "accuracy_delta_points")  # fmt: skip
    return {k: {"passed": v["gate"]["passed"], "failures": v["gate"]["failures"],
                **{m: v["summary"][m] for m in keep if m in v["summary"]}}
            for k, v in parity["results"].items()}  # fmt: skip


def files(out: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file the export wrote, with its sha256 from export.json, then parity.json and export.json."""
    from tunelab.fsutil import sha256_file

    rows = [{"name": n, "bytes": (out / n).stat().st_size, "sha256": h} for n, h in manifest["files"].items()]
    for n in ("parity.json", "export.json"):
        rows.append({"name": n, "bytes": (out / n).stat().st_size, "sha256": sha256_file(out / n)})
    return rows


def last_error(log: Path) -> str:
    try:
        lines = log.read_bytes()[-4000:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return "no log"
    return next((ln for ln in reversed(lines) if ln.lower().startswith("error")), lines[-1] if lines else "no output")

