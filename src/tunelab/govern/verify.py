"""`tunelab govern verify RUN`: recompute every hash a run recorded, in the order its things were made:

    data -> config / base model -> audit -> checkpoints -> adapter -> eval -> report -> exports

Two kinds of check. A *recorded* hash (the manifest's inputs and outputs, each checkpoint's MANIFEST, the
report's entry, each export's export.json) is compared with the file's sha256 now. A *link* is a hash one stage
wrote about another's output, compared with that output now: the audit's and the model card's data hashes
with the data files, the eval's adapter and base-weights hashes with the adapter and the base, the eval's
predictions hash with its predictions, the summary's chain hash with the manifest's inputs and outputs. A
changed byte anywhere is a `mismatch`; a file the record names that is not there is `missing`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.fsutil import read_json_object, sha256_file
from tunelab.govern.provenance import chain_digest

STAGES = ("data", "config", "base model", "audit", "training", "checkpoints", "adapter", "eval", "report", "exports")


@dataclass
class Check:
    stage: str
    what: str  # the file, or the link ("eval/tuned/metrics.json adapter_sha256 -> model/adapter_model.safetensors")
    recorded: str | None
    actual: str | None
    status: str  # ok | mismatch | missing

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _stage_of(path: str, group: str) -> str:
    if group != "outputs":
        return {"data": "data", "canaries": "data", "config": "config", "base_model": "base model"}.get(group, group)
    top = path.split("/", 1)[0]
    return {"audit": "audit", "train": "training", "model": "adapter", "eval": "eval"}.get(top, "outputs")


def _file(run: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else run / p


def _same(stage: str, what: str, recorded: str | None, actual: str) -> Check:
    return Check(stage, what, recorded, actual, "ok" if actual == recorded else "mismatch")


def _check(stage: str, what: str, path: Path, recorded: str | None) -> Check:
    if not path.is_file():
        return Check(stage, what, recorded, None, "missing")
    return _same(stage, what, recorded, sha256_file(path))


def verify_run(run: Path) -> list[Check]:
    """Every check of the run, in the chain's order."""
    manifest_path = run / "manifest.json"
    if not manifest_path.is_file():
        from tunelab.errors import DataError

        raise DataError("not a run directory: no manifest.json", file=run)
    m = json.loads(manifest_path.read_text(encoding="utf-8"))
    checks: list[Check] = []
    for group, rows in m.get("inputs", {}).items():
        for r in rows:
            checks.append(_check(_stage_of(r["path"], group), r["path"], _file(run, r["path"]), r["sha256"]))
    data = {Path(r["path"]).name: r for r in m.get("inputs", {}).get("data", [])}
    for r in m.get("outputs", []):
        checks.append(_check(_stage_of(r["path"], "outputs"), r["path"], _file(run, r["path"]), r["sha256"]))
    checks += _links(run, data)
    checks += _checkpoints(run)
    rep = m.get("report")
    if rep:
        checks.append(_check("report", rep["path"], _file(run, rep["path"]), rep["sha256"]))
    summary = read_json_object(run / "summary.json")
    if summary and summary.get("chain_sha256"):
        checks.append(_same("report", "summary.json chain_sha256 -> manifest inputs and outputs",
                             summary["chain_sha256"], chain_digest(m)))  # fmt: skip
    checks += _exports(run, m.get("exports", []))
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(checks, key=lambda c: order.get(c.stage, len(STAGES)))


def _links(run: Path, data: dict[str, dict[str, Any]]) -> list[Check]:
    out: list[Check] = []
    audit = read_json_object(run / "audit" / "audit.json")
    for f in (audit or {}).get("files", []):
        name = Path(f["path"]).name
        if name in data and f.get("sha256"):
            out.append(_check("audit", f"audit/audit.json files[{name}].sha256 -> {data[name]['path']}",
                              _file(run, data[name]["path"]), f["sha256"]))  # fmt: skip
    card = run / "model" / "README.md"
    if card.is_file():
        for role, recorded in re.findall(r"^- (train|eval) data sha256: ([0-9a-f]{64})$", card.read_text(), re.M):
            name = f"{role}.jsonl"
            if name in data:
                out.append(_check("adapter", f"model/README.md {role} data sha256 -> {data[name]['path']}",
                                  _file(run, data[name]["path"]), recorded))  # fmt: skip
    from tunelab.evaluate.command import weights_digest

    digests: dict[Path, str] = {}  # base and tuned sides name the same base: its weights are read once

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = weights_digest(path)
        return digests[path]

    for side in sorted((run / "eval").glob("*/metrics.json")) + sorted((run / "eval").glob("metrics.json")):
        m = read_json_object(side) or {}
        rel = str(side.relative_to(run))
        model = m.get("model") or {}
        if model.get("adapter_sha256"):  # the digest of the adapter directory's weights and settings
            adapter = run / "model"
            out.append(_same("eval", f"{rel} adapter_sha256 -> model/", model["adapter_sha256"],
                             digest(adapter) if adapter.is_dir() else "missing"))  # fmt: skip
        if model.get("weights_sha256") and model.get("path") and Path(model["path"]).is_dir():
            out.append(_same("eval", f"{rel} weights_sha256 -> {model['path']}", model["weights_sha256"],
                             digest(Path(model["path"]))))  # fmt: skip
        if m.get("predictions_sha256"):
            out.append(_check("eval", f"{rel} predictions_sha256 -> {side.parent.relative_to(run)}/predictions.jsonl",
                              side.parent / "predictions.jsonl", m["predictions_sha256"]))  # fmt: skip
    return out


def _checkpoints(run: Path) -> list[Check]:
    out: list[Check] = []
    for man in sorted((run / "checkpoints").glob("step-*/MANIFEST")):
        try:
            files = json.loads(man.read_text())["files"]
        except (ValueError, KeyError):
            out.append(Check("checkpoints", str(man.relative_to(run)), None, None, "mismatch"))
            continue
        for name, f in sorted(files.items()):
            p = man.parent / name
            out.append(_check("checkpoints", str(p.relative_to(run)), p, f["sha256"]))
    return out


def _exports(run: Path, exports: list[dict[str, Any]]) -> list[Check]:
    out: list[Check] = []
    for e in exports:
        d = _file(run, e["dir"])
        out.append(_check("exports", f"{e['dir']}/export.json", d / "export.json", e["export_json_sha256"]))
        if out[-1].status != "ok":
            continue
        for name, digest in sorted(json.loads((d / "export.json").read_text())["files"].items()):
            out.append(_check("exports", f"{e['dir']}/{name}", d / name, digest))
    return out


def first_failure(checks: list[Check]) -> Check | None:
    return next((c for c in checks if c.status != "ok"), None)

