from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunelab.data.formats import Record, Rejected
from tunelab.data.readers import stream_records
from tunelab.errors import DataError


def _collect(path: Path, fmt: str = "auto") -> tuple[list[Record], list[Rejected]]:
    ok: list[Record] = []
    bad: list[Rejected] = []
    for r in stream_records(path, fmt):
        (ok if isinstance(r, Record) else bad).append(r)  # type: ignore[arg-type]
    return ok, bad


def test_auto_detects_each_format_per_record(tmp_path: Path) -> None:
    p = tmp_path / "mixed.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"prompt": "2+2=", "completion": "4"},
        {"text": "great film", "label": "positive"},
        {"text": "plain pre-training text"},
        {"question": "?"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ok, bad = _collect(p)
    assert [r.messages[-1]["content"] for r in ok] == ["yo", "4", "positive", "plain pre-training text"]
    assert ok[3].is_text and ok[3].input == "plain pre-training text" and ok[3].answer == ""
    assert ok[1].input == "2+2="
    assert (bad[0].line, bad[0].field) == (5, "")


def test_explicit_format_names_the_missing_field(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"prompt": "x"}) + "\n" + json.dumps({"prompt": "x", "completion": 3}) + "\n")
    _, bad = _collect(p, "completion")
    assert [(b.line, b.field) for b in bad] == [(1, "completion"), (2, "completion")]
    _, bad = _collect(p, "classification")
    assert bad[0].field == "text" and bad[0].reason == "missing"


def test_csv_with_a_bad_row(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerow(["a", "The striker scored", "sport"])
        w.writerow(["b", "", "tech"])
        w.writerow(["c", "multi\nline text", "politics"])
    ok, bad = _collect(p, "classification")
    assert [r.id for r in ok] == ["a", "c"]
    assert (bad[0].line, bad[0].field, bad[0].reason) == (3, "text", "is empty")


def test_csv_messages_column_is_json(tmp_path: Path) -> None:
    p = tmp_path / "chat.csv"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["messages"])
        w.writerow([json.dumps(msgs)])
        w.writerow(["not json"])
    ok, bad = _collect(p, "chat")
    assert ok[0].messages == msgs
    assert bad[0].field == "messages" and "invalid JSON" in bad[0].reason


def test_parquet_rows(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", None], "completion": ["x", "y", "z"]}), p)
    ok, bad = _collect(p)
    assert [r.input for r in ok] == ["a", "b"]
    assert bad[0].line == 3


def test_unsupported_and_broken_files(tmp_path: Path) -> None:
    txt = tmp_path / "d.txt"
    txt.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        list(stream_records(txt))
    fake = tmp_path / "d.parquet"
    fake.write_text("not parquet")
    with pytest.raises(DataError, match="not a Parquet file"):
        list(stream_records(fake))
