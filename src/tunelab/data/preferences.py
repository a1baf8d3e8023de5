"""Preference data for DPO: `{prompt, chosen, rejected}` per line (JSONL, CSV or Parquet), or OpenAI's DPO rows.

`prompt` is a string (one user turn) or a list of messages ending with a user turn; `chosen` and `rejected`
are strings or a single assistant message (`{"role": "assistant", "content": ...}`, alone or in a list, as
TRL's conversational format writes them). A bad row becomes a quarantine entry naming its line and field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.formats import Record, Rejected, check_messages
from tunelab.data.readers import FileNotes, iter_units

Message = dict[str, str]
# OpenAI's DPO rows, `{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}`,
# read as prompt / chosen / rejected; errors name OpenAI's fields
OPENAI_FIELDS = {"prompt": "input.messages", "chosen": "preferred_output", "rejected": "non_preferred_output"}


@dataclass
class Preference:
    file: str
    line: int
    id: str
    prompt: list[Message]
    chosen: str
    rejected: str

    def conversation(self, answer: str) -> list[Message]:
        return [*self.prompt, {"role": "assistant", "content": answer}]

    def chosen_record(self) -> Record:
        """The prompt with the preferred answer, as a chat record (what the data audit checks)."""
        return Record(self.file, self.line, self.id, self.conversation(self.chosen))


def _answer(obj: dict[str, Any], key: str) -> str | tuple[str, str]:
    v = obj.get(key)
    if isinstance(v, list) and len(v) == 1:
        v = v[0]
    if isinstance(v, dict):
        if v.get("role") != "assistant":
            return f"{key}.role", "must be 'assistant'"
        v = v.get("content")
    if v is None:
        return key, "missing"
    if not isinstance(v, str):
        return key, f"must be a string or an assistant message, got {type(v).__name__}"
    if not v.strip():
        return key, "is empty"
    return v


def _prompt(obj: dict[str, Any]) -> list[Message] | tuple[str, str]:
    p = obj.get("prompt")
    if p is None:
        return "prompt", "missing"
    if isinstance(p, str):
        return [{"role": "user", "content": p}] if p.strip() else ("prompt", "is empty")
    if not isinstance(p, list):
        return "prompt", f"must be a string or a list of messages, got {type(p).__name__}"
    # Checked as a conversation by appending a stand-in answer: roles, order and content in one place.
    problem = check_messages([*p, {"role": "assistant", "content": "x"}])
    if problem:
        fld, reason = problem
        return fld.replace("messages", "prompt", 1), reason
    return [dict(m) for m in p]


def parse_preference(raw: bytes | dict[str, Any], file: str, line: int) -> Preference | Rejected:
    def reject(fld: str, reason: str) -> Rejected:
        shown = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else json.dumps(raw, default=str)
        return Rejected(file, line, fld, reason, shown[:2000])

    if isinstance(raw, bytes):
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            return reject("", f"not valid UTF-8 at byte {e.start}")
        except json.JSONDecodeError as e:
            return reject("", f"invalid JSON: {e.msg} at column {e.colno}")
    else:
        obj = raw
    if not isinstance(obj, dict):
        return reject("", f"must be a JSON object, got {type(obj).__name__}")
    if "preferred_output" in obj or "non_preferred_output" in obj:  # OpenAI's DPO format
        inp = obj.get("input")
        obj = {"id": obj.get("id"), "prompt": inp.get("messages") if isinstance(inp, dict) else inp,
               "chosen": obj.get("preferred_output"), "rejected": obj.get("non_preferred_output")}  # fmt: skip
        plain = reject

        def reject(fld: str, reason: str) -> Rejected:
            for ours, theirs in OPENAI_FIELDS.items():
                if fld == ours or fld.startswith(ours + ".") or fld.startswith(ours + "["):
                    fld = theirs + fld[len(ours) :]
                    break
            return plain(fld, reason)

    prompt = _prompt(obj)
    if isinstance(prompt, tuple):
        return reject(*prompt)
    chosen = _answer(obj, "chosen")
    if isinstance(chosen, tuple):
        return reject(*chosen)
    rejected = _answer(obj, "rejected")
    if isinstance(rejected, tuple):
        return reject(*rejected)
    if chosen.strip() == rejected.strip():
        return reject("rejected", "is the same as chosen: the pair teaches nothing")
    rid = obj.get("id")
    return Preference(
        file, line, str(rid) if rid is not None else f"{Path(file).name}:{line}", prompt, chosen, rejected
    )


def read_preferences(path: Path) -> Iterator[Preference | Rejected]:
    notes = FileNotes()
    for line, raw in iter_units(path, notes):
        yield parse_preference(raw, str(path), line)
