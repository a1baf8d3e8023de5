"""`tunelab data audit` as a user runs it: exit codes, outputs, and inputs left untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import chat, write_jsonl
from tunelab.data.tasks import datacard_path


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tunelab", "data", "audit", *args], capture_output=True, text=True)


def _data(tmp_path: Path) -> tuple[Path, Path]:
    train = write_jsonl(
        tmp_path / "train.jsonl",
        [chat("Mail bob@example.com about the launch", "ok"), chat("Mail bob@example.com about the launch", "ok"),
         chat("The striker scored twice in the final", "sport"), chat("leaked question here", "x")],
    )  # fmt: skip
    ev = write_jsonl(tmp_path / "eval.jsonl", [chat("leaked question here", "x")])
    for p in (train, ev):
        datacard_path(p).write_text(yaml.safe_dump({"licence": {"id": "MIT"}, "source": "test"}))
    return train, ev


def test_audit_passes_and_writes_its_outputs(tmp_path: Path) -> None:
    train, ev = _data(tmp_path)
    before = train.read_bytes()
    res = audit(str(train), "--eval", str(ev), "--out", str(tmp_path / "out"), "--dedup", "--redact",
                "--policy", str(_policy(tmp_path, fail_on_contamination=False)))  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    r = json.loads((out / "audit.json").read_text())
    # PII is counted in every valid record as given, duplicates included
    assert (r["records_total"], r["duplicates"]["exact"], r["pii"]["counts"]) == (5, 1, {"EMAIL": 2})
    assert r["contamination"][str(ev)]["eval_ids"] == ["eval-1"]
    clean = [json.loads(x) for x in (out / "clean" / "train.jsonl").read_text().splitlines()]
    assert [c["messages"][1]["content"] for c in clean] == [
        "Mail <EMAIL> about the launch",
        "The striker scored twice in the final",
    ]
    assert train.read_bytes() == before  # nothing in the input is modified
    assert "Data audit" in (out / "audit.html").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert {Path(i["path"]).name for i in manifest["inputs"]} == {"train.jsonl", "eval.jsonl"}


def _policy(tmp_path: Path, **kw: object) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(yaml.safe_dump({"max_quarantined_ratio": 0.5, **kw}))
    return p


def test_contamination_is_a_gate(tmp_path: Path) -> None:
    train, ev = _data(tmp_path)
    res = audit(str(train), "--eval", str(ev), "--out", str(tmp_path / "out"), "--policy", str(_policy(tmp_path)))
    assert res.returncode == 1
    assert res.stderr.strip() == "error: audit failed: 1 eval item(s) also appear in the training data"


def test_json_output_is_the_audit(tmp_path: Path) -> None:
    train, _ = _data(tmp_path)
    res = audit(str(train), "--out", str(tmp_path / "out"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verdict"] == "pass"


def test_bad_inputs_are_exit_2_with_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    csv = tmp_path / "x.jsonl"
    csv.write_text("a,b\n1,2\n")
    bad_policy = tmp_path / "p.yaml"
    bad_policy.write_text("allowed_licencez: []\n")
    train, _ = _data(tmp_path)
    cases = {
        (str(tmp_path / "missing.jsonl"),): "no such file",
        (str(empty),): "empty dataset",
        (str(csv),): "not JSONL",
        (str(train), "--policy", str(bad_policy)): "[allowed_licencez]: unknown key",
    }
    for args, msg in cases.items():
        res = audit(*args, "--out", str(tmp_path / "o"))
        assert res.returncode == 2, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and msg in res.stderr


def test_licence_by_flags_for_files_without_a_sidecar(tmp_path: Path) -> None:
    bare = write_jsonl(tmp_path / "bare.jsonl", [chat("a question", "an answer")])
    with_card = write_jsonl(tmp_path / "carded.jsonl", [chat("another question", "x")])
    datacard_path(with_card).write_text(yaml.safe_dump({"licence": {"id": "CC-BY-4.0"}}))
    res = audit(str(bare), str(with_card), "--licence", "MIT", "--source", "support tickets 2024", "--owner", "acme",
                "--out", str(tmp_path / "out"), "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    files = {Path(f["path"]).name: f for f in json.loads(res.stdout)["files"]}
    assert (files["bare.jsonl"]["licence"], files["bare.jsonl"]["datacard"]) == ("MIT", "flags")
    assert files["bare.jsonl"]["source"] == "support tickets 2024" and files["bare.jsonl"]["owner"] == "acme"
    assert (files["carded.jsonl"]["licence"], files["carded.jsonl"]["datacard"]) == ("CC-BY-4.0", "sidecar")
    refused = audit(str(bare), "--licence", "LicenseRef-Proprietary", "--out", str(tmp_path / "o2"))
    assert refused.returncode == 1 and "not in the policy's allowed licences" in refused.stderr
