from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import chat, write_jsonl
from tunelab.data.formats import check_messages, read_chat_jsonl
from tunelab.errors import DataError


def test_valid_records_pass_with_ids_from_the_file(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [chat("a", "b"), {"id": "x", **chat("c", "d", system=None)}])
    res = read_chat_jsonl(p)
    assert [r.id for r in res.records] == ["d-1", "x"]
    assert res.records[0].answer == "b"
    assert res.rejected == []


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ("{not json", "", "invalid JSON"),
        ("[1, 2]", "", "must be a JSON object"),
        ('{"text": "hi"}', "messages", "missing"),
        ('{"messages": "hi"}', "messages", "must be a list"),
        ('{"messages": []}', "messages", "is empty"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role", "unknown role 'bot'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content", "must be a string"),
        ('{"messages": [{"role": "user", "content": "  "}]}', "messages[0].content", "is empty"),
        (
            '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]}',
            "messages[0].role",
            "expected 'user'",
        ),
        ('{"messages": [{"role": "user", "content": "a"}]}', "messages", "must end with an assistant"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, '
            '{"role": "assistant", "content": "b"}]}',
            "messages",
            "system message may only come first",
        ),
    ],
)
def test_each_bad_record_is_quarantined_with_line_and_field(tmp_path: Path, line: str, field: str, reason: str) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [chat("ok", "fine"), line, chat("ok2", "fine")])
    res = read_chat_jsonl(p)
    assert len(res.records) == 2  # the audit goes on with the rest
    [bad] = res.rejected
    assert (bad.file, bad.line, bad.field) == (str(p), 2, field)
    assert reason in bad.reason


def test_non_utf8_bom_and_crlf(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    good = json.dumps(chat("a", "b")).encode()
    p.write_bytes(b"\xef\xbb\xbf" + good + b"\r\n" + b'{"messages": "\xff"}\n' + good.replace(b'"a"', b'"c"') + b"\n")
    res = read_chat_jsonl(p)
    assert len(res.records) == 2
    assert res.rejected[0].line == 2 and "UTF-8" in res.rejected[0].reason
    assert any("byte-order mark" in w for w in res.warnings)
    assert any("CRLF" in w for w in res.warnings)


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "d.jsonl", [{"id": 1, **chat("a", "b")}, {"id": "1", **chat("c", "d")}])
    res = read_chat_jsonl(p)
    assert len(res.records) == 1
    assert res.rejected[0].field == "id"


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_chat_jsonl(tmp_path / "nope.jsonl")


def test_check_messages_accepts_multi_turn() -> None:
    msgs = [{"role": r, "content": "x"} for r in ("system", "user", "assistant", "user", "assistant")]
    assert check_messages(msgs) is None
