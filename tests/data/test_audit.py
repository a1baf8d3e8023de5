from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from tests.conftest import chat, write_jsonl
from tunelab.data.audit import run_audit
from tunelab.data.licence import DataPolicy
from tunelab.data.tasks import datacard_path


def _card(p: Path, licence: str) -> None:
    datacard_path(p).write_text(yaml.safe_dump({"source": "test", "licence": {"id": licence}}))


def test_duplicates_overlap_and_quarantine(tmp_path: Path) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [
            chat("alpha", "A"),
            chat("Alpha ", "A"),
            chat("beta", "B"),
            chat("leaked", "C"),
            "{bad",
            chat("gamma", "A"),
        ],
    )
    ev = write_jsonl(tmp_path / "eval.jsonl", [chat("leaked", "C"), chat("delta", "B")])
    for p in (train, ev):
        _card(p, "MIT")
    res = run_audit([train], [ev], tmp_path / "audit", policy=DataPolicy(max_quarantined_ratio=0.5))
    r = res.report
    assert r["records_total"] == 8
    assert r["records_valid"] == 7
    assert r["duplicates"]["exact"] == 1
    assert r["duplicates"]["clusters"] == [{"kept": "train-1", "removed": ["train-2"]}]
    c = r["contamination"][str(ev)]
    assert (c["items"], c["contaminated"], c["eval_ids"], c["train_ids"]) == (2, 1, ["eval-1"], ["train-4"])
    assert [x.id for x in res.train] == ["train-1", "train-3", "train-6"]
    assert r["verdict"] == "pass"
    q = [json.loads(x) for x in (tmp_path / "audit" / "quarantine.jsonl").read_text().splitlines()]
    assert {(x["line"], x["field"]) for x in q} == {(5, ""), (2, "messages"), (4, "messages")}
    assert r["files"][0]["sha256"] == hashlib.sha256(train.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["verdict"] == "pass"


def test_licence_gate(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat("a", "b")])
    _card(train, "LicenseRef-NonCommercial")
    r = run_audit([train], [], tmp_path / "a1", policy=DataPolicy()).report
    assert r["verdict"] == "fail"
    assert r["licence"][0]["status"] == "not-allowed"
    allowed = DataPolicy(allowed_licences=["LicenseRef-NonCommercial"])
    assert run_audit([train], [], tmp_path / "a2", policy=allowed).report["verdict"] == "pass"


def test_unknown_licence_warns_or_fails_by_policy(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat("a", "b")])
    warn = run_audit([train], [], tmp_path / "a1", policy=DataPolicy()).report
    assert warn["verdict"] == "pass" and any("no recorded licence" in w for w in warn["warnings"])
    fail = run_audit([train], [], tmp_path / "a2", policy=DataPolicy(unknown_licence="fail")).report
    assert fail["verdict"] == "fail"


def test_contamination_fails_when_not_removed(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat("same", "A"), chat("other", "B")])
    ev = write_jsonl(tmp_path / "eval.jsonl", [chat("same", "A")])
    r = run_audit([train], [ev], tmp_path / "a", policy=DataPolicy(), decontaminate=False).report
    assert r["verdict"] == "fail"
    assert "also appear in the training data" in r["reasons"][0]


def test_too_long_and_untrainable_records_are_quarantined(tmp_path: Path, tiny_tok) -> None:  # type: ignore[no-untyped-def]
    train = write_jsonl(tmp_path / "train.jsonl", [chat("short", "A"), chat("word " * 300, "B")])
    res = run_audit(
        [train],
        [],
        tmp_path / "a",
        policy=DataPolicy(max_quarantined_ratio=1.0),
        tokenizer=tiny_tok,
        max_length=64,
    )
    assert [x.id for x in res.train] == ["train-1"]
    assert "> max length 64" in res.rejected[0].reason
    assert res.report["lengths"]["tokens_max"] <= 64
    # half the records would be truncated: the gate says no, unless the policy allows that share
    assert res.report["verdict"] == "fail" and "would truncate their answers" in res.report["reasons"][0]
    lenient = DataPolicy(max_quarantined_ratio=1.0, max_too_long_ratio=0.5)
    again = run_audit([train], [], tmp_path / "b", policy=lenient, tokenizer=tiny_tok, max_length=64)
    assert again.report["verdict"] == "pass", again.report["reasons"]


def test_two_processes_give_the_same_audit_as_one(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import random

    import tunelab.data.audit as audit_mod

    rng = random.Random(0)
    words = [f"w{i}" for i in range(500)]
    rows = [chat(" ".join(rng.choice(words) for _ in range(40)), rng.choice("AB")) for _ in range(5000)]
    rows += rows[:50]  # exact duplicates
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    ev = write_jsonl(tmp_path / "eval.jsonl", rows[100:110])
    monkeypatch.setattr(audit_mod, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(audit_mod, "CHUNK", 700)
    one = run_audit([train], [ev], tmp_path / "a1", policy=DataPolicy(), keep_records=False, workers=1).report
    two = run_audit([train], [ev], tmp_path / "a2", policy=DataPolicy(), keep_records=False, workers=2).report
    assert one == two
    assert one["duplicates"]["exact"] == 50
    assert next(iter(one["contamination"].values()))["contaminated"] == 10
    assert (tmp_path / "a1" / "quarantine.jsonl").read_bytes() == (tmp_path / "a2" / "quarantine.jsonl").read_bytes()
