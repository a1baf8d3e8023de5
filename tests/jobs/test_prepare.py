"""The held-out split of a job: seeded, grouped by input, the same whether the lines are in memory or streamed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunelab.jobs.prepare import _input_of, held_out_indices, iter_lines, split


def _reference(lines: list[bytes], seed: int) -> set[int]:
    """The split as first written: inputs sorted by sha256(seed, input), whole groups taken until a tenth."""
    groups: dict[str, list[int]] = {}
    for i, ln in enumerate(lines):
        groups.setdefault(_input_of(ln), []).append(i)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).digest())
    held: set[int] = set()
    for k in order:
        if len(held) >= max(1, min(200, len(lines) // 10)):
            break
        held.update(groups[k])
    return held


def test_the_streamed_split_is_the_split_and_keeps_same_inputs_together(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": f"q{i % 37}"}, {"role": "assistant", "content": str(i)}]}
            for i in range(300)]  # fmt: skip
    lines = [json.dumps(r).encode() for r in rows]
    p = tmp_path / "t.jsonl"
    p.write_bytes(b"\r\n".join(lines) + b"\r\n\n")
    for seed in (0, 7, 123):
        held = held_out_indices(iter_lines(p), seed)
        assert held == _reference(lines, seed) and 30 <= len(held) <= 40
        inputs = {_input_of(lines[i]) for i in held}
        assert all(_input_of(ln) not in inputs for i, ln in enumerate(lines) if i not in held)
    train, test = split(lines, 7)
    assert len(train) + len(test) == 300 and set(test) == {lines[i] for i in held_out_indices(lines, 7)}
    assert held_out_indices(lines[:19], 0) == set()
