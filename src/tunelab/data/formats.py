"""Read chat JSONL record by record: valid records go on, each bad one becomes a quarantine row.

A chat record is `{"messages": [{"role", "content"}, ...], "id"?: str}`: an optional system message
first, then user and assistant turns alternating, starting with the user and ending with the assistant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

ROLES = ("system", "user", "assistant")
_BOM = b"\xef\xbb\xbf"


@dataclass
class Record:
    file: str
    line: int
    id: str
    messages: list[dict[str, str]]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]

    @property
    def input(self) -> str:
        """What the model is shown (the user turns): two records with the same input leak the answer."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages}


@dataclass
class Rejected:
    file: str
    line: int
    field: str
    reason: str
    raw: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_messages(messages: Any) -> tuple[str, str] | None:
    """(field, reason) for the first schema problem in a `messages` value, or None when it is valid."""
    if not isinstance(messages, list):
        return "messages", f"must be a list, got {type(messages).__name__}"
    if not messages:
        return "messages", "is empty"
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return where, f"must be an object, got {type(m).__name__}"
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            return f"{where}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})"
        if not isinstance(content, str):
            return f"{where}.content", f"must be a string, got {type(content).__name__}"
        if not content.strip():
            return f"{where}.content", "is empty"
    roles = [m["role"] for m in messages]
    turns = roles[1:] if roles[0] == "system" else roles
    if "system" in turns:
        return "messages", "a system message may only come first"
    for i, r in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if r != expected:
            k = i + (len(roles) - len(turns))
            return (
                f"messages[{k}].role",
                f"expected {expected!r} here (turns alternate, user first), got {r!r}",
            )
    if not turns or turns[-1] != "assistant":
        return "messages", "must end with an assistant message"
    return None


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        yield from enumerate(f, start=1)


def read_chat_jsonl(path: str | Path, *, id_prefix: str | None = None) -> ReadResult:
    """Validate every line of a chat JSONL file. Raises DataError only when the file cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", file=path)
    out = ReadResult()
    prefix = id_prefix or path.stem
    seen_ids: set[str] = set()
    crlf = 0
    try:
        lines = list(iter_lines(path))
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror}", file=path) from e
    for n, raw in lines:
        if n == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
            out.warnings.append(f"{path}:1: file starts with a UTF-8 byte-order mark (ignored)")
        if raw.endswith(b"\r\n"):
            crlf += 1
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            out.rejected.append(Rejected(str(path), n, "", f"not valid UTF-8 at byte {e.start}", repr(raw[:200])))
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            out.rejected.append(Rejected(str(path), n, "", f"invalid JSON: {e.msg} at column {e.colno}", text))
            continue
        if not isinstance(obj, dict):
            out.rejected.append(Rejected(str(path), n, "", f"must be a JSON object, got {type(obj).__name__}", text))
            continue
        if "messages" not in obj:
            out.rejected.append(Rejected(str(path), n, "messages", "missing", text))
            continue
        problem = check_messages(obj["messages"])
        if problem:
            out.rejected.append(Rejected(str(path), n, problem[0], problem[1], text))
            continue
        rid = obj.get("id", f"{prefix}-{n}")
        if not isinstance(rid, str | int) or isinstance(rid, bool):
            out.rejected.append(Rejected(str(path), n, "id", "must be a string or integer", text))
            continue
        rid = str(rid)
        if rid in seen_ids:
            out.rejected.append(Rejected(str(path), n, "id", f"duplicate id {rid!r}", text))
            continue
        seen_ids.add(rid)
        out.records.append(Record(str(path), n, rid, obj["messages"]))
    if crlf:
        out.warnings.append(f"{path}: {crlf} line(s) end with CRLF (accepted)")
    return out
