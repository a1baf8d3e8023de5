"""Stream records out of JSONL, CSV and Parquet files, one unit at a time (never the whole file).

Each unit is parsed into a `Record` or a `Rejected` with the file, line (or row) and field. Formats:
`chat` ({"messages": [...]}), `completion` ({"prompt", "completion"}), `classification` ({"text", "label"}),
`text` ({"text"}); `auto` decides per record from its fields. In CSV and Parquet a `messages` column holds
the JSON of the message list.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import Record, Rejected, check_messages
from tunelab.errors import DataError

FORMATS = ("auto", "chat", "completion", "classification", "text")
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_BOM = b"\xef\xbb\xbf"


@dataclass
class FileNotes:
    """File-level findings made while streaming (BOM, CRLF line ends)."""

    warnings: list[str] = field(default_factory=list)
    crlf: int = 0


def kind_of(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unsupported file type {path.suffix!r} (use .jsonl, .csv or .parquet)", file=path)
    return kind


def iter_units(path: Path, notes: FileNotes) -> Iterator[tuple[int, bytes | dict[str, Any]]]:
    """(line or row number, raw unit): bytes of a JSONL line, or a dict for a CSV/Parquet row."""
    kind = kind_of(path)
    try:
        if kind == "jsonl":
            with open(path, "rb") as f:
                for n, raw in enumerate(f, start=1):
                    if n == 1 and raw.startswith(_BOM):
                        raw = raw[len(_BOM) :]
                        notes.warnings.append(f"{path}:1: file starts with a UTF-8 byte-order mark (ignored)")
                    if raw.endswith(b"\r\n"):
                        notes.crlf += 1
                    if raw.strip():
                        yield n, raw
        elif kind == "csv":
            with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                reader = csv.DictReader(f)
                for row in reader:
                    yield reader.line_num, dict(row)
        else:
            yield from _parquet_rows(path)
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", file=path) from e


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise DataError("reading Parquet needs pyarrow", file=path) from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own error types for a file that is not Parquet
        raise DataError(f"not a Parquet file: {e}", file=path) from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _reject(file: str, line: int, fld: str, reason: str, raw: Any) -> Rejected:
    shown = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
    return Rejected(file, line, fld, reason, shown[:2000])


def _string_field(obj: dict[str, Any], key: str) -> str | tuple[str, str]:
    """The field's text, or (field, reason)."""
    if key not in obj or obj[key] is None:
        return key, "missing"
    v = obj[key]
    if not isinstance(v, str):
        return key, f"must be a string, got {type(v).__name__}"
    if not v.strip():
        return key, "is empty"
    if any("\udc80" <= c <= "\udcff" for c in v):
        return key, "not valid UTF-8"
    return v


def detect(obj: dict[str, Any]) -> str | None:
    if "messages" in obj:
        return "chat"
    if "prompt" in obj and "completion" in obj:
        return "completion"
    if "text" in obj and "label" in obj:
        return "classification"
    if "text" in obj:
        return "text"
    return None


def parse_unit(raw: bytes | dict[str, Any], fmt: str, file: str, line: int, prefix: str) -> Record | Rejected:
    """One raw unit → a validated Record, or a Rejected naming the field and the reason."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            return _reject(file, line, "", f"not valid UTF-8 at byte {e.start}", repr(raw[:200]))
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return _reject(file, line, "", f"invalid JSON: {e.msg} at column {e.colno}", text)
        if not isinstance(obj, dict):
            return _reject(file, line, "", f"must be a JSON object, got {type(obj).__name__}", text)
    else:
        obj = raw
    kind = detect(obj) if fmt == "auto" else fmt
    if kind is None:
        return _reject(file, line, "", "no known fields (messages | prompt+completion | text+label | text)", obj)
    if kind == "chat":
        msgs = obj.get("messages")
        if msgs is None:
            return _reject(file, line, "messages", "missing", obj)
        if isinstance(msgs, str) and not isinstance(raw, bytes):  # CSV/Parquet: a JSON column
            try:
                msgs = json.loads(msgs)
            except json.JSONDecodeError as e:
                return _reject(file, line, "messages", f"invalid JSON in column: {e.msg}", obj)
        problem = check_messages(msgs)
        if problem:
            return _reject(file, line, problem[0], problem[1], obj)
        messages = msgs
    else:
        a, b = {"completion": ("prompt", "completion"), "classification": ("text", "label"), "text": ("text", "")}[kind]
        first = _string_field(obj, a)
        if isinstance(first, tuple):
            return _reject(file, line, *first, obj)
        if kind == "text":
            messages = [{"role": "text", "content": first}]
        else:
            label = obj.get(b)
            numeric = kind == "classification" and isinstance(label, int | float) and not isinstance(label, bool)
            second = str(label) if numeric else _string_field(obj, b)  # 0/1 labels are common
            if isinstance(second, tuple):
                return _reject(file, line, *second, obj)
            messages = [{"role": "user", "content": first}, {"role": "assistant", "content": second}]
    rid = obj.get("id", f"{prefix}-{line}")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
        return _reject(file, line, "id", "must be a non-empty string or an integer", obj)
    return Record(file, line, str(rid), messages)


def stream_records(path: Path, fmt: str = "auto", notes: FileNotes | None = None) -> Iterator[Record | Rejected]:
    """Records and rejections of one file, in file order; repeated ids are rejected."""
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})", field="--format")
    if not path.is_file():
        raise DataError("no such file", file=path)
    notes = notes or FileNotes()
    seen: set[str] = set()
    for line, raw in iter_units(path, notes):
        r = parse_unit(raw, fmt, str(path), line, path.stem)
        if isinstance(r, Record):
            if r.id in seen:
                r = Rejected(r.file, r.line, "id", f"duplicate id {r.id!r}")
            else:
                seen.add(r.id)
        yield r
    if notes.crlf:
        notes.warnings.append(f"{path}: {notes.crlf} line(s) end with CRLF (accepted)")
