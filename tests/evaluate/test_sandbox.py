"""Model-written code runs in a limited process: failures, hangs, escapes and early exits are all fails."""

from __future__ import annotations

import time

import pytest

from tunelab.evaluate.sandbox import extract_code, program_for, run_program


def test_passing_and_failing_programs() -> None:
    assert run_program("def f(x):\n    return x * 2\nassert f(2) == 4\n").status == "passed"
    r = run_program("assert 1 == 2, 'wrong'")
    assert r.status == "failed" and "AssertionError: wrong" in r.detail


def test_a_hang_is_a_timeout_and_is_killed() -> None:
    t0 = time.perf_counter()
    r = run_program("import time\nwhile True:\n    time.sleep(0.01)\n", timeout_s=1.5)
    assert r.status == "timeout" and time.perf_counter() - t0 < 10


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)", "not allowed"),
        ("import subprocess\nsubprocess.run(['true'])", "not allowed"),
        ("import os\nos.system('true')", "not allowed"),
        ("x = bytearray(4 << 30)", "MemoryError"),
        ("import sys\nsys.exit(0)\nassert False", "before its tests"),
        ("import os\nos._exit(0)", "without running its tests"),
    ],
)
def test_escapes_and_early_exits_fail(source: str, words: str) -> None:
    r = run_program(source, timeout_s=5)
    assert r.status in ("failed", "error") and words in r.detail, r


def test_the_program_is_prompt_plus_completion_unless_the_completion_repeats_the_function() -> None:
    prompt = 'def add(a, b):\n    """Sum."""\n'
    tests = "assert add(2, 3) == 5"
    assert run_program(program_for(prompt, "    return a + b\n", tests)).passed
    fenced = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    assert extract_code(fenced).startswith("def add")
    assert run_program(program_for(prompt, fenced, tests)).passed
    assert not run_program(program_for(prompt, "    return a - b\n", tests)).passed
