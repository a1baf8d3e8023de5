"""Tables a person exports (CSV from a spreadsheet, JSONL with their own keys) turned into chat examples by
naming the columns: which one is the input, which the answer (or the label), and an optional system prompt.

`sniff` looks at the start of a file (type, encoding, delimiter, columns, a few sample rows) and says plainly
why a file cannot be read: binary (a spreadsheet or an image), empty, a quote that never closes (naming the
line it opens on). `convert` streams the whole file into chat JSONL; a row without an input or an answer is not
trained on but written to a quarantine file with its line and the column it lacks, never dropped silently.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.fsutil import atomic_write_parts

SAMPLE_BYTES = 256 * 1024
SAMPLE_ROWS = 8
KINDS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_NOT_TEXT = {
    ".xlsx": "an Excel workbook", ".xls": "an Excel workbook", ".ods": "a spreadsheet", ".numbers": "a spreadsheet",
    ".pdf": "a PDF", ".docx": "a Word document", ".zip": "a zip archive", ".png": "an image", ".jpg": "an image",
    ".jpeg": "an image", ".gif": "an image",
}  # fmt: skip


@dataclass
class Mapping:
    """Which columns make an example. `output` and `label` are alternatives: the answer to learn."""

    input: str = ""
    output: str = ""
    label: str = ""
    system: str = ""  # a fixed system prompt put before every example (not a column)

    def answer_column(self) -> str:
        return self.output or self.label


@dataclass
class Sniffed:
    kind: str  # csv | jsonl
    encoding: str
    delimiter: str
    columns: list[str]
    sample: list[dict[str, str]]
    ready: bool  # the rows are already chat/completion records: no columns to choose
    notes: list[str] = field(default_factory=list)

    def guess(self) -> Mapping:
        """A first choice of columns by their names, which the person can change."""
        low = {c.lower().strip(): c for c in self.columns}

        def pick(*names: str) -> str:
            return next((low[n] for n in names if n in low), "")

        inp = pick("input", "question", "prompt", "text", "instruction", "query", "message", "customer")
        out = pick("output", "answer", "response", "completion", "reply", "target")
        lab = "" if out else pick("label", "category", "class", "topic", "intent")
        if not inp and self.columns:
            inp = self.columns[0]
        if not out and not lab and len(self.columns) > 1:
            out = next(c for c in self.columns if c != inp)
        return Mapping(inp, out, lab)


def _kind(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix in _NOT_TEXT:
        raise DataError(f"this is {_NOT_TEXT[suffix]}, not a table of examples: save or export it as CSV "
                        "(File > Save as > CSV) and upload that", file=filename, field="file")  # fmt: skip
    if suffix not in KINDS:
        raise DataError(f"files of type {suffix or '(no extension)'!r} are not read here: upload a .csv or .jsonl "
                        "file", file=filename, field="file")  # fmt: skip
    return KINDS[suffix]


def _encoding(head: bytes, filename: str) -> str:
    if b"\x00" in head[:8192]:
        raise DataError("this file is binary, not text (a spreadsheet or an image?): export it as CSV",
                        file=filename, field="file")  # fmt: skip
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8-sig"
    except UnicodeDecodeError:
        return "cp1252"  # what spreadsheets on Windows export; every byte decodes, so nothing is lost


def sniff(path: Path, filename: str) -> Sniffed:
    kind = _kind(filename)
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
    if not head.strip():
        raise DataError("the file is empty", file=filename, field="file")
    enc = _encoding(head, filename)
    notes = [] if enc.startswith("utf-8") else ["The file is not UTF-8; it was read as Windows-1252 (Excel's own)."]
    if kind == "jsonl":
        rows = []
        for n, obj in _json_rows(path, filename, enc):
            rows.append((n, obj))
            if len(rows) >= SAMPLE_ROWS:
                break
        if not rows:
            raise DataError("no records", file=filename, field="file")
        ready = all(_ready(o) for _, o in rows)
        cols: list[str] = []
        for _, o in rows:
            cols += [k for k in o if k not in cols]
        return Sniffed(kind, enc, "", cols, [_strings(o) for _, o in rows], ready, notes)
    text = head.decode(enc, errors="replace")
    delim = _delimiter(text)
    rows_ = list(_csv_rows(io.StringIO(text, newline=""), filename, delim, partial=len(head) == SAMPLE_BYTES))
    if not rows_:
        raise DataError("the file has a header row but no examples", file=filename, line=1, field="file")
    header, sample = rows_[0][1], [r for _, r in rows_[1 : SAMPLE_ROWS + 1]]
    cols = _header(header, filename)
    dicts = [dict(zip(cols, (r + [""] * len(cols))[: len(cols)], strict=True)) for r in sample]
    if not dicts:
        raise DataError("the file has a header row but no examples", file=filename, line=1, field="file")
    ready = "messages" in cols or {"prompt", "completion"} <= set(cols)
    return Sniffed("csv", enc, delim, cols, dicts, ready, notes)


def _ready(o: dict[str, Any]) -> bool:
    return "messages" in o or ("prompt" in o and "completion" in o) or "preferred_output" in o or "chosen" in o


def _strings(o: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for k, v in o.items()}


def _delimiter(text: str) -> str:
    first = text.split("\n", 1)[0]
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _header(header: list[str], filename: str) -> list[str]:
    cols = [h.strip() for h in header]
    if not any(cols):
        raise DataError("the first row must name the columns", file=filename, line=1, field="header")
    seen: set[str] = set()
    for i, c in enumerate(cols):
        if not c:
            cols[i] = c = f"column {i + 1}"
        if c in seen:
            raise DataError(f"two columns are named {c!r}: give each its own name", file=filename, line=1,
                            field="header")  # fmt: skip
        seen.add(c)
    return cols


def _csv_rows(f: Any, filename: str, delim: str, partial: bool = False) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(f, delimiter=delim, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            if partial:  # the sample was cut in the middle of a row: the full read decides
                return
            why = ("a quote opened on this line is never closed" if "end of data" in str(e) or "EOF" in str(e)
                   else f"the row cannot be read as CSV ({e})")  # fmt: skip
            raise DataError(f"{why}; fix the quotes (a quote inside a field is written twice: \"\") and upload "
                            "again", file=filename, line=start, field="csv") from None  # fmt: skip
        line, start = start, reader.line_num + 1
        if row:
            yield line, row


def _json_rows(path: Path, filename: str, enc: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding=enc, errors="strict" if enc.startswith("utf-8") else "replace") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise DataError(f"not valid JSON ({e.args[0].split(':')[0]})", file=filename, line=n,
                                field="json") from None  # fmt: skip
            if not isinstance(obj, dict):
                raise DataError("each line must be a JSON object", file=filename, line=n, field="json")
            yield n, obj


def rows(path: Path, filename: str, s: Sniffed) -> Iterator[tuple[int, dict[str, str]]]:
    """Every row of the file as (line, {column: text}), streamed."""
    if s.kind == "jsonl":
        for n, o in _json_rows(path, filename, s.encoding):
            yield n, _strings(o)
        return
    with open(path, encoding=s.encoding, errors="replace", newline="") as f:
        it = _csv_rows(f, filename, s.delimiter)
        _, header = next(it, (1, []))
        cols = _header(header, filename)
        for n, r in it:
            yield n, dict(zip(cols, (r + [""] * len(cols))[: len(cols)], strict=True))


def example(row: dict[str, str], m: Mapping) -> dict[str, Any] | tuple[str, str]:
    """The chat example a row becomes, or (column, reason) when it cannot become one."""
    inp, ans = m.input, m.answer_column()
    text, answer = (row.get(inp) or "").strip(), (row.get(ans) or "").strip()
    if not text:
        return inp or "input", "the input is empty"
    if not answer:
        return ans or "output", "the answer is empty"
    msgs = [{"role": "system", "content": m.system.strip()}] if m.system.strip() else []
    return {"messages": [*msgs, {"role": "user", "content": text}, {"role": "assistant", "content": answer}]}


@dataclass
class Converted:
    records: int
    quarantined: int
    rows: list[int]  # the uploaded row (line) each written example came from


def convert(path: Path, filename: str, s: Sniffed, m: Mapping | None, out: Path, quarantine: Path) -> Converted:
    """Write chat JSONL to `out` (atomically) and the rows that cannot be examples to `quarantine`.
    With `m` None the rows are kept as they are (they are chat, completion or preference records already)."""
    if m is not None:
        for what, col in (("input", m.input), ("answer", m.answer_column())):
            if not col:
                raise DataError(f"choose the column that holds the {what}", file=filename, field=what)
            if col not in s.columns:
                raise DataError(f"there is no column {col!r}", file=filename, field=what)
        if m.input == m.answer_column():
            raise DataError("the input and the answer must be different columns", file=filename, field="output")
    bad: list[bytes] = []
    kept: list[int] = []

    def examples() -> Iterator[bytes]:
        src: Iterator[tuple[int, dict[str, Any]]]
        src = _json_rows(path, filename, s.encoding) if m is None and s.kind == "jsonl" else rows(path, filename, s)
        for n, row in src:
            ex = row if m is None else example(row, m)
            if m is None and s.kind == "csv" and "messages" in row:
                try:
                    ex = {**row, "messages": json.loads(row["messages"])}
                except ValueError:
                    ex = ("messages", "the messages column is not valid JSON")
            if m is None and not isinstance(ex, tuple):
                ex = _checked(ex, filename, n)
            if isinstance(ex, tuple):
                bad.append(json.dumps({"file": filename, "line": n, "field": ex[0], "reason": ex[1], "raw": row},
                                      ensure_ascii=False).encode() + b"\n")  # fmt: skip
            else:
                kept.append(n)
                yield json.dumps(ex, ensure_ascii=False).encode() + b"\n"

    atomic_write_parts(out, examples())
    if not kept:
        out.unlink(missing_ok=True)
        raise DataError("no row could become an example: every row lacks its input or its answer",
                        file=filename, field=(m.input if m else "file"))  # fmt: skip
    atomic_write_parts(quarantine, bad)
    return Converted(len(kept), len(bad), kept)


def _checked(obj: dict[str, Any], filename: str, line: int) -> dict[str, Any] | tuple[str, str]:
    """A record kept as it is, if tunelab's readers accept it; else (field, reason) for the quarantine."""
    from tunelab.data.formats import Rejected
    from tunelab.data.preferences import parse_preference
    from tunelab.data.readers import parse_unit

    pref = "preferred_output" in obj or "chosen" in obj
    r = parse_preference(obj, filename, line) if pref else parse_unit(obj, "auto", filename, line, "u")
    return (r.field or "record", r.reason) if isinstance(r, Rejected) else obj
