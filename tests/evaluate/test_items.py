"""Eval files: the kind is told by the fields; a bad item stops the eval with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.errors import DataError
from tunelab.evaluate.items import read_eval_file

CHAT = {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]}


@pytest.mark.parametrize(
    ("row", "kind"),
    [
        ({"question": "2+2?", "choices": ["3", "4"], "answer": 1}, "multiple_choice"),
        ({"prompt": "def f():\n", "tests": "assert f() is None"}, "code"),
        ({"text": "some news", "label": "sport"}, "classification"),
        (CHAT, "generation"),
        ({"prompt": "Say hi", "completion": "hi"}, "generation"),
        ({"text": "Plain text to score."}, "perplexity"),
    ],
)
def test_kind_is_told_by_the_fields(tmp_path: Path, row: dict[str, object], kind: str) -> None:
    items = read_eval_file(write_jsonl(tmp_path / "e.jsonl", [row]))
    assert items[0].kind == kind
    assert items[0].id == "e:1"  # no id: file stem and line, stable across runs


def test_multiple_choice_answer_may_be_the_choice_text(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "mc.jsonl", [{"id": "q", "question": "?", "choices": ["a", "b", "c"], "answer": "c"}])
    (item,) = read_eval_file(p)
    assert item.answer == 2 and item.gold == "c"


@pytest.mark.parametrize(
    ("rows", "line", "field", "words"),
    [
        ([CHAT, {"messages": [{"role": "user", "content": "no answer"}]}], 2, "messages", "no reference"),
        ([{"prompt": "x"}], 1, "completion", "missing"),
        ([{"question": "?", "choices": ["only one"], "answer": 0}], 1, "choices", "at least two"),
        ([{"question": "?", "choices": ["a", "b"], "answer": 5}], 1, "answer", "outside"),
        ([{"question": "?", "choices": ["a", "b"], "answer": "z"}], 1, "answer", "neither"),
        ([{"id": "x", **CHAT}, {"id": "x", **CHAT}], 2, "id", "duplicate"),
        ([CHAT, {"text": "t", "label": "l"}], 2, "record", "one kind per file"),
        (['{"messages": [}'], 1, "record", "invalid JSON"),
        ([{"foo": 1}], 1, "record", "cannot tell"),
    ],
)
def test_a_bad_item_names_file_line_and_field(
    tmp_path: Path, rows: list[object], line: int, field: str, words: str
) -> None:
    p = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as e:
        read_eval_file(p)
    assert (e.value.file, e.value.line, e.value.field) == (str(p), line, field)
    assert words in e.value.message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "empty.jsonl"
    p.write_text("\n")
    with pytest.raises(DataError, match="no eval items"):
        read_eval_file(p)


def test_csv_items(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("id,text,label\na,the match,sport\nb,the vote,politics\n")
    items = read_eval_file(p)
    assert [(i.id, i.kind, i.reference) for i in items] == [
        ("a", "classification", "sport"),
        ("b", "classification", "politics"),
    ]
