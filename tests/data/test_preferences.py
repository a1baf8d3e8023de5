from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import write_jsonl
from tunelab.data.formats import Rejected
from tunelab.data.preferences import Preference, read_preferences


def test_string_and_conversational_rows_parse(tmp_path: Path) -> None:
    f = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
            {
                "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": {"role": "assistant", "content": "5"},
                "id": "sum",
            },
        ],
    )
    rows = list(read_preferences(f))
    assert all(isinstance(r, Preference) for r in rows)
    a, b = rows
    assert isinstance(a, Preference) and isinstance(b, Preference)
    assert a.prompt == [{"role": "user", "content": "Capital of France?"}] and a.id == "p.jsonl:1"
    assert b.id == "sum" and b.chosen == "4" and b.rejected == "5"
    assert b.conversation("4")[-1] == {"role": "assistant", "content": "4"}


@pytest.mark.parametrize(
    ("row", "field", "reason"),
    [
        ('{"prompt": "q", "chosen": "a"}', "rejected", "missing"),
        ('{"prompt": "q", "chosen": "a", "rejected": "a"}', "rejected", "same as chosen"),
        ('{"prompt": "", "chosen": "a", "rejected": "b"}', "prompt", "empty"),
        ('{"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}', "prompt[0].role", ""),
        ('{"prompt": "q", "chosen": {"role": "user", "content": "a"}, "rejected": "b"}', "chosen.role", "assistant"),
        ('{"prompt": "q", "chosen": 3, "rejected": "b"}', "chosen", "must be a string"),
        ("{not json", "", "invalid JSON"),
    ],
)
def test_bad_rows_name_line_field_and_reason(tmp_path: Path, row: str, field: str, reason: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok", "chosen": "yes", "rejected": "no"}\n' + row + "\n")
    good, bad = list(read_preferences(f))
    assert isinstance(good, Preference)
    assert isinstance(bad, Rejected)
    assert (bad.file, bad.line, bad.field) == (str(f), 2, field)
    assert reason in bad.reason
