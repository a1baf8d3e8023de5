"""Tables to chat examples: sniffing a person's file, named columns, and rows that cannot be examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.data.mapping import Mapping, convert, sniff
from tunelab.errors import DataError


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_a_spreadsheet_csv_with_semicolons_a_bom_and_crlf_becomes_chat_examples(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.csv", "\ufeffQuestion;Answer;Team\r\n\"Is it, ok?\";yes;a\r\nhi;;b\r\nwhy;because;c\r\n"
               .encode())  # fmt: skip
    s = sniff(p, "t.csv")
    assert (s.kind, s.delimiter, s.columns, s.ready) == ("csv", ";", ["Question", "Answer", "Team"], False)
    assert s.guess() == Mapping("Question", "Answer", "")
    done = convert(p, "t.csv", s, Mapping("Question", "Answer", "", "Be brief."), tmp_path / "o.jsonl",
                   tmp_path / "q.jsonl")  # fmt: skip
    assert (done.records, done.quarantined, done.rows) == (2, 1, [2, 4])
    first = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert first == {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it, ok?"},
                                  {"role": "assistant", "content": "yes"}]}  # fmt: skip
    q = json.loads((tmp_path / "q.jsonl").read_text())
    assert (q["line"], q["field"], q["reason"]) == (3, "Answer", "the answer is empty")


def test_a_label_column_is_the_answer_and_windows_1252_is_read(tmp_path: Path) -> None:
    p = _write(tmp_path, "l.csv", "text,label\ncaf\xe9 closed,food\n".encode("cp1252"))
    s = sniff(p, "l.csv")
    assert s.encoding == "cp1252" and s.notes
    convert(p, "l.csv", s, Mapping("text", "", "label"), tmp_path / "o.jsonl", tmp_path / "q.jsonl")
    msgs = json.loads((tmp_path / "o.jsonl").read_text())["messages"]
    assert msgs == [{"role": "user", "content": "café closed"}, {"role": "assistant", "content": "food"}]


@pytest.mark.parametrize(
    ("name", "data", "field", "line", "words"),
    [
        ("book.xlsx", b"PK\x03\x04", "file", None, "Excel workbook"),
        ("notes.md", b"# hi", "file", None, "not read here"),
        ("empty.csv", b"  \n", "file", None, "empty"),
        ("bin.csv", b"a,b\n\x00\x01", "file", None, "binary"),
        ("broken.csv", b'q,a\n"ok",1\n"never closed,2\nz,w\n', "csv", 3, "never closed"),
        ("head.csv", b"q,q\n1,2\n", "header", 1, "two columns"),
        ("bad.jsonl", b'{"a": 1}\n{oops\n', "json", 2, "not valid JSON"),
    ],
)
def test_files_that_cannot_be_read_say_why_with_line_and_field(
    tmp_path: Path, name: str, data: bytes, field: str, line: int | None, words: str
) -> None:
    p = _write(tmp_path, name, data)
    with pytest.raises(DataError) as e:
        sniff(p, name)
    assert (e.value.field, e.value.line) == (field, line) and words in e.value.message


def test_ready_jsonl_is_kept_and_its_bad_records_quarantined(tmp_path: Path) -> None:
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    p = _write(tmp_path, "c.jsonl", (json.dumps(good) + '\n{"messages": 3}\n').encode())
    s = sniff(p, "c.jsonl")
    assert s.ready
    done = convert(p, "c.jsonl", s, None, tmp_path / "o.jsonl", tmp_path / "q.jsonl")
    assert (done.records, done.quarantined) == (1, 1)
    assert json.loads((tmp_path / "o.jsonl").read_text()) == good
    assert json.loads((tmp_path / "q.jsonl").read_text())["line"] == 2


def test_a_mapping_that_makes_no_example_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    p = _write(tmp_path, "t.csv", b"a,b\n1,\n2,\n")
    s = sniff(p, "t.csv")
    with pytest.raises(DataError, match="no row could become an example"):
        convert(p, "t.csv", s, Mapping("a", "b"), tmp_path / "o.jsonl", tmp_path / "q.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(DataError, match="different columns"):
        convert(p, "t.csv", s, Mapping("a", "a"), tmp_path / "o.jsonl", tmp_path / "q.jsonl")
