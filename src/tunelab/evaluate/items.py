"""Eval items: what `tunelab eval` scores, read from a user's file or a built-in task.

One file holds one kind of item, told by its fields (or by `--kind`):

- classification   {"text", "label"}, or chat/completion records whose answers are labels (`--kind`)
- generation       {"messages": [..., {"role": "assistant", "content": REF}]} or {"prompt", "completion"|"reference"};
                   an optional "context" (the passage the answer must stay faithful to)
- multiple_choice  {"question"|"prompt", "choices": [...], "answer": index or choice text}, optional "context"
- perplexity       {"text"}
- code             {"prompt", "tests"}: the model completes the prompt; the tests run against it

Unlike the audit, an eval refuses a bad item instead of quarantining it: dropping items silently would
change the denominator of every metric and break the pairing of two eval runs by id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.formats import check_messages
from tunelab.data.readers import FileNotes, iter_units
from tunelab.errors import DataError

KINDS = ("auto", "classification", "generation", "multiple_choice", "perplexity", "code")
Message = dict[str, str]


@dataclass
class EvalItem:
    id: str
    kind: str
    file: str
    line: int
    messages: list[Message] = field(default_factory=list)  # the prompt (no answer) for chat-style kinds
    reference: str | None = None
    context: str | None = None
    choices: list[str] = field(default_factory=list)
    answer: int | None = None
    text: str | None = None  # perplexity text, or the raw multiple-choice / code prompt
    tests: str | None = None

    @property
    def input(self) -> str:
        if self.messages:
            return "\n".join(m["content"] for m in self.messages if m["role"] == "user")
        return self.text or ""

    @property
    def gold(self) -> str | None:
        if self.kind == "multiple_choice" and self.answer is not None:
            return self.choices[self.answer]
        return self.reference


@dataclass
class EvalSet:
    name: str
    kind: str
    items: list[EvalItem]
    files: list[Path]
    labels: tuple[str, ...] = ()
    system_prompt: str | None = None


def _fail(path: Path, line: int, fld: str, reason: str) -> DataError:
    return DataError(reason, file=path, line=line, field=fld)


def _detect(obj: dict[str, Any]) -> str:
    if "choices" in obj:
        return "multiple_choice"
    if "tests" in obj:
        return "code"
    if "label" in obj:
        return "classification"
    if "messages" in obj or "prompt" in obj:
        return "generation"
    if "text" in obj:
        return "perplexity"
    return "unknown"


def _str(obj: dict[str, Any], key: str, path: Path, line: int, *, required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise _fail(path, line, key, "missing or empty")
        return None
    if not isinstance(v, str):
        raise _fail(path, line, key, f"must be a string, not {type(v).__name__}")
    return v


def _chat(obj: dict[str, Any], path: Path, line: int) -> tuple[list[Message], str]:
    msgs = obj.get("messages")
    if isinstance(msgs, str):  # CSV / Parquet columns hold the JSON text
        try:
            msgs = json.loads(msgs)
        except json.JSONDecodeError as e:
            raise _fail(path, line, "messages", f"not valid JSON: {e.msg}") from None
    bad = check_messages(msgs)
    if bad and bad[1].startswith("must end with"):
        raise _fail(path, line, "messages", "no reference: the last message must be the expected assistant answer")
    if bad:
        raise _fail(path, line, bad[0], bad[1])
    assert isinstance(msgs, list)
    return [dict(m) for m in msgs[:-1]], str(msgs[-1]["content"])


def parse_item(obj: Any, kind: str, path: Path, line: int) -> EvalItem:
    if not isinstance(obj, dict):
        raise _fail(path, line, "record", "must be a JSON object")
    k = _detect(obj) if kind == "auto" else kind
    rid = obj.get("id")
    if rid is None or rid == "":
        rid = f"{path.stem}:{line}"
    elif not isinstance(rid, str | int) or isinstance(rid, bool):
        raise _fail(path, line, "id", "must be a string or an integer")
    item = EvalItem(id=str(rid), kind=k, file=str(path), line=line)
    if k == "multiple_choice":
        q = _str(obj, "question", path, line, required=False) or _str(obj, "prompt", path, line)
        item.text = q
        item.context = _str(obj, "context", path, line, required=False)
        ch = obj.get("choices")
        if isinstance(ch, str):
            try:
                ch = json.loads(ch)
            except json.JSONDecodeError:
                ch = None
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c.strip() for c in ch):
            raise _fail(path, line, "choices", "must be a list of at least two non-empty strings")
        item.choices = list(ch)
        ans = obj.get("answer")
        if isinstance(ans, str) and ans.strip().isdigit() and ans not in ch:
            ans = int(ans)
        if isinstance(ans, bool) or ans is None:
            raise _fail(path, line, "answer", "missing: the index of the right choice, or its text")
        if isinstance(ans, int):
            if not 0 <= ans < len(ch):
                raise _fail(path, line, "answer", f"index {ans} is outside the {len(ch)} choices")
            item.answer = ans
        elif isinstance(ans, str) and ans in ch:
            item.answer = ch.index(ans)
        else:
            raise _fail(path, line, "answer", f"{ans!r} is neither a choice index nor one of the choices")
    elif k == "code":
        item.text = _str(obj, "prompt", path, line)
        item.tests = _str(obj, "tests", path, line)
        item.reference = _str(obj, "solution", path, line, required=False)
    elif k == "perplexity":
        item.text = _str(obj, "text", path, line)
    elif k in ("classification", "generation"):
        if "messages" in obj:
            item.messages, item.reference = _chat(obj, path, line)
        elif "prompt" in obj:
            p = _str(obj, "prompt", path, line)
            assert p is not None
            item.messages = [{"role": "user", "content": p}]
            ref_key = next((k for k in ("completion", "reference", "label") if k in obj), None)
            if ref_key is None:
                raise _fail(path, line, "completion", "missing: the expected answer (completion, or reference)")
            item.reference = _str(obj, ref_key, path, line)
        elif "text" in obj:
            t = _str(obj, "text", path, line)
            assert t is not None
            item.messages = [{"role": "user", "content": t}]
            item.reference = _str(obj, "label" if "label" in obj else "reference", path, line)
        else:
            raise _fail(path, line, "messages", "missing: give messages, prompt + completion, or text + label")
        item.context = _str(obj, "context", path, line, required=False)
        if item.reference is not None:
            item.reference = item.reference.strip()
    else:
        raise _fail(
            path,
            line,
            "record",
            "cannot tell the item kind from its fields (see `tunelab eval --help`; or pass --kind)",
        )
    return item


def read_eval_file(path: Path, kind: str = "auto") -> list[EvalItem]:
    """Every item of one file, or a DataError naming the first bad one (file, line, field)."""
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})", field="--kind")
    if not path.is_file():
        raise DataError("no such file", file=path)
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for line, raw in iter_units(path, FileNotes()):
        if isinstance(raw, bytes):
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise _fail(path, line, "record", "not UTF-8") from None
            except json.JSONDecodeError as e:
                raise _fail(path, line, "record", f"invalid JSON: {e.msg}") from None
        else:
            obj = raw
        item = parse_item(obj, kind, path, line)
        if items and item.kind != items[0].kind:
            raise _fail(
                path, line, "record", f"a {item.kind} item in a file of {items[0].kind} items (one kind per file)"
            )
        if item.id in seen:
            raise _fail(path, line, "id", f"duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = line
        items.append(item)
    if not items:
        raise DataError("no eval items (the file is empty)", file=path)
    return items
