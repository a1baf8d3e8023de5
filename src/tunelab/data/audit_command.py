"""`tunelab data audit`: audit chat JSONL files, write audit.json / audit.html / quarantine.jsonl and, on
request, cleaned copies (deduplicated, decontaminated, redacted). The inputs are never modified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tunelab.config import config_error
from tunelab.data.audit import AuditResult, run_audit
from tunelab.data.licence import DataPolicy
from tunelab.data.pii import redact as redact_text
from tunelab.errors import ConfigError, DataError
from tunelab.fsutil import atomic_write_json, atomic_write_jsonl, sha256_file
from tunelab.govern.provenance import tool_versions
from tunelab.report.audit_html import write_audit_html


@dataclass
class AuditOptions:
    paths: list[Path]
    eval_paths: list[Path] = field(default_factory=list)
    out: Path | None = None
    model: str | None = None
    policy: Path | None = None
    max_length: int | None = None
    dedup: bool = False
    redact: bool = False
    fmt: str = "auto"
    near_threshold: float = 0.8
    datacard: dict[str, Any] | None = None  # from --licence/--source/--owner, for files without a sidecar


def load_policy(path: Path | None) -> DataPolicy:
    if path is None:
        return DataPolicy()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise ConfigError(f"cannot read policy: {e.strerror}", file=path, field="--policy") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=path, field="--policy") from None
    try:
        return DataPolicy.model_validate(data)
    except ValidationError as e:
        raise config_error(e, str(path)) from None


def audit_files(opts: AuditOptions) -> tuple[AuditResult, Path]:
    """Run the audit; returns the result and the directory it wrote."""
    from tunelab.paths import new_run_dir

    for p in [*opts.paths, *opts.eval_paths]:
        if not p.is_file():
            raise DataError("no such file", file=p)
    policy = load_policy(opts.policy)
    tok, max_length = None, opts.max_length
    if opts.model is not None:
        from tunelab.models.loading import load_tokenizer, resolve_model

        resolved = resolve_model(opts.model)
        tok = load_tokenizer(resolved.path)
        max_length = max_length or _context_length(resolved.path)
    out = opts.out or new_run_dir("audit")
    inputs = {p.resolve() for p in [*opts.paths, *opts.eval_paths]}
    result = run_audit(
        opts.paths,
        opts.eval_paths,
        out,
        policy=policy,
        tokenizer=tok,
        max_length=max_length,
        decontaminate=opts.dedup,
        remove_near=opts.dedup,
        fmt=opts.fmt,
        near_threshold=opts.near_threshold,
        keep_records=opts.dedup or opts.redact,
        datacard=opts.datacard,
    )
    r = result.report
    if r["records_total"] == 0:
        raise DataError("empty dataset: no records in " + ", ".join(str(p) for p in opts.paths))
    unreadable = r["quarantine_reasons"].get("invalid JSON", 0) + r["quarantine_reasons"].get("UTF-8", 0)
    if r["records_valid"] == 0 and unreadable == r["records_total"]:
        raise DataError("not JSONL: no line parses as a JSON object", file=opts.paths[0])
    outputs = [out / "audit.json", out / "quarantine.jsonl"]
    if opts.dedup or opts.redact:
        outputs += _write_clean(result, out / "clean", inputs, redact=opts.redact)
    write_audit_html(out / "audit.html", r)
    outputs.append(out / "audit.html")
    atomic_write_json(
        out / "manifest.json",
        {
            "inputs": [{"path": str(p), "sha256": sha256_file(p)} for p in [*opts.paths, *opts.eval_paths]],
            "outputs": [{"path": str(p), "sha256": sha256_file(p)} for p in outputs],
            "policy": policy.model_dump(),
            "tools": tool_versions(),
        },
    )
    return result, out


def _write_clean(result: AuditResult, dest: Path, inputs: set[Path], *, redact: bool) -> list[Path]:
    by_file: dict[str, list[dict[str, Any]]] = {}
    for rec in result.train:
        by_file.setdefault(rec.file, []).append(rec.to_json())
    for path, recs in result.eval.items():
        by_file.setdefault(path, []).extend(r.to_json() for r in recs)
    written = []
    for path, rows in by_file.items():
        target = dest / Path(path).name
        if target.resolve() in inputs:
            raise ConfigError("would overwrite an input file; choose another --out", file=target, field="--out")
        if redact:
            for row in rows:
                for m in row["messages"]:
                    m["content"] = redact_text(m["content"])[0]
        atomic_write_jsonl(target, rows)
        written.append(target)
    return written


def _context_length(path: Path) -> int:
    import json

    cfg = json.loads((path / "config.json").read_text())
    return int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 2048)
