from __future__ import annotations

import copy
from pathlib import Path

from tests.conftest import chat, write_jsonl
from tunelab.data.audit import run_audit
from tunelab.data.formats import Record
from tunelab.data.licence import DataPolicy
from tunelab.data.preflight import preflight, render_terminal


def _rec(user: str, answer: str) -> Record:
    return Record("f", 1, "r1", chat(user, answer)["messages"])  # type: ignore[arg-type]


def test_shows_exactly_the_trained_tokens(tiny_tok) -> None:  # type: ignore[no-untyped-def]
    pf = preflight(tiny_tok, [_rec("The striker scored", "sport")])
    trained = "".join(s["text"] for s in pf["segments"] if s["trained"])
    assert trained == "sport<|im_end|>\n"
    assert pf["eos_trained_share"] == 1.0 and pf["problems"] == []
    assert "[black on green]sport" in render_terminal(pf)


def test_a_template_without_end_of_turn_fails_the_audit(tiny_tok, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tok = copy.deepcopy(tiny_tok)
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    assert preflight(tok, [_rec("hi", "yo")])["problems"]
    train = write_jsonl(tmp_path / "t.jsonl", [chat("hi there", "yo")])
    r = run_audit([train], [], tmp_path / "a", policy=DataPolicy(), tokenizer=tok, max_length=512).report
    assert r["verdict"] == "fail"
    assert any("end-of-turn token" in x for x in r["reasons"])
