"""A job's data in its run directory: the training file (minus a held-out split when no validation file was
given), the eval file, and datacards recording where the bytes came from and under which licence."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from tunelab.data.formats import Rejected
from tunelab.data.tasks import datacard_path, read_datacard
from tunelab.fsutil import atomic_write_bytes, atomic_write_text

HELD_OUT_MAX = 200
HELD_OUT_MIN_RECORDS = 20  # below this every record trains and the comparison is skipped


def _lines(path: Path) -> list[bytes]:
    return list(iter_lines(path))


def iter_lines(path: Path) -> Iterator[bytes]:
    """The non-empty lines of a JSONL file, streamed."""
    with open(path, "rb") as f:
        for ln in f:
            ln = ln.rstrip(b"\r\n")
            if ln.strip():
                yield ln


def _input_of(line: bytes) -> str:
    """What the model is shown: records with the same input stay on the same side of the split."""
    obj = json.loads(line)
    if "messages" in obj:
        return json.dumps([m for m in obj["messages"] if m.get("role") != "assistant"], sort_keys=True)
    if "input" in obj:
        return json.dumps(obj["input"], sort_keys=True)
    return json.dumps(obj.get("prompt", obj), sort_keys=True)


def split(lines: list[bytes], seed: int) -> tuple[list[bytes], list[bytes]]:
    """(train, held out): about a tenth (at most 200) held out, chosen by a seeded hash of each input."""
    held = held_out_indices(lines, seed)
    return [ln for i, ln in enumerate(lines) if i not in held], [ln for i, ln in enumerate(lines) if i in held]


def held_out_count(n: int) -> int:
    """How many of `n` records are held out: none below HELD_OUT_MIN_RECORDS, else a tenth (1 to HELD_OUT_MAX)."""
    return 0 if n < HELD_OUT_MIN_RECORDS else max(1, min(HELD_OUT_MAX, n // 10))


def held_out_indices(lines: Iterable[bytes], seed: int) -> set[int]:
    """Which lines (by index) are held out; streams, keeping one digest per distinct input."""
    groups: dict[bytes, list[int]] = {}
    n = 0
    for i, ln in enumerate(lines):
        groups.setdefault(hashlib.sha256(f"{seed}\0{_input_of(ln)}".encode()).digest(), []).append(i)
        n = i + 1
    want = held_out_count(n)
    held: set[int] = set()
    for k in sorted(groups):
        if len(held) >= want:
            break
        held.update(groups[k])
    return held


def as_eval(line: bytes, n: int) -> bytes:
    """An eval item from a training line: a preference pair's prompt with its chosen answer as reference."""
    obj = json.loads(line)
    if "preferred_output" in obj or "chosen" in obj:
        from tunelab.data.preferences import parse_preference

        p = parse_preference(line, "held-out", n)
        assert not isinstance(p, Rejected)  # the upload was validated
        return json.dumps({"id": p.id, "messages": p.conversation(p.chosen)}).encode()
    return line


def prepare(
    run_dir: Path, spec: dict[str, Any], train_file: dict[str, Any], eval_file: dict[str, Any] | None
) -> dict[str, Any]:
    """Write data/train.jsonl and data/eval.jsonl (if any) with datacards; what was done, for the job's events."""
    data = run_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    lines = _lines(Path(train_file["path"]))
    held: list[bytes] = []
    if eval_file is not None:
        train, held = lines, _lines(Path(eval_file["path"]))
        how = f"validation file {eval_file['id']}"
    else:
        train, held = split(lines, int(spec["seed"]))
        how = f"{len(held)} records held out of the training file (seeded, grouped by input)" if held else (
            f"no held-out split: fewer than {HELD_OUT_MIN_RECORDS} records and no validation file")  # fmt: skip
    atomic_write_bytes(data / "train.jsonl", b"\n".join(train) + b"\n")
    _card(data / "train.jsonl", spec, train_file)
    eval_path = None
    if held:
        eval_path = data / "eval.jsonl"
        atomic_write_bytes(eval_path, b"\n".join(as_eval(x, i) for i, x in enumerate(held, start=1)) + b"\n")
        _card(eval_path, spec, eval_file or train_file)
    return {"train": str(data / "train.jsonl"), "eval": str(eval_path) if eval_path else None,
            "train_records": len(train), "eval_records": len(held), "how": how}  # fmt: skip


def _card(path: Path, spec: dict[str, Any], f: dict[str, Any]) -> None:
    lic = spec["tunelab"].get("licence")
    up = read_datacard(Path(f["path"]))
    card: dict[str, Any] = {
        "name": f["filename"],
        "source": f"uploaded to the jobs API as {f['id']} by {spec['owner_name']}",
        "sha256_of_upload": f["sha256"],
    }
    if up:  # what the uploader said of the data: its licence, where it came from, who owns it
        card["uploaded_with"] = up
        if up.get("licence"):
            card["licence"] = up["licence"]
    if lic:
        card["licence"] = {"id": lic}
    atomic_write_text(datacard_path(path), yaml.safe_dump(card, sort_keys=False))
