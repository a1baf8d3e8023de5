"""Read chat JSONL record by record: valid records go on, each bad one becomes a quarantine row.

A chat record is `{"messages": [{"role", "content"}, ...], "id"?: str}`: an optional system message
first, then user and assistant turns alternating, starting with the user and ending with the assistant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    file: str
    line: int
    id: str
    messages: list[dict[str, str]]

    @property
    def is_text(self) -> bool:
        """A plain-text record (pre-training style) rather than a conversation."""
        return self.messages[0]["role"] == "text"

    @property
    def answer(self) -> str:
        return "" if self.is_text else self.messages[-1]["content"]

    @property
    def input(self) -> str:
        """What the model is shown (the user turns): two records with the same input leak the answer."""
        if self.is_text:
            return self.messages[0]["content"]
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


def read_chat_jsonl(path: str | Path, *, fmt: str = "chat") -> ReadResult:
    """Validate every record of a file (whole, for small data). Raises DataError only when it cannot be read."""
    from tunelab.data.readers import FileNotes, stream_records

    out, notes = ReadResult(), FileNotes()
    for r in stream_records(Path(path), fmt, notes):
        if isinstance(r, Record):
            out.records.append(r)
        else:
            out.rejected.append(r)
    out.warnings = notes.warnings
    return out
