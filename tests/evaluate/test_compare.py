"""`tunelab compare`: pairing by id, the right test per metric type, Holm, the gate and its exit codes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.errors import ConfigError, DataError
from tunelab.evaluate.compare import compare_runs, parse_gate
from tunelab.evaluate.stats import holm, mcnemar_exact


def _run_dir(path: Path, rows: list[dict[str, object]], metrics: dict[str, float] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = {"metrics": metrics or {}, "latency": {"ttft_p50_s": 0.1}, "data": {"files": [{"sha256": "x"}]}}
    (path / "metrics.json").write_text(json.dumps(m))
    return path


def _pair_of_runs(tmp_path: Path, n: int = 60, shift: float = 0.0) -> tuple[Path, Path]:
    rng = random.Random(1)
    a_rows, b_rows = [], []
    for i in range(n):
        acc_a = float(rng.random() < 0.5)
        acc_b = float(rng.random() < 0.5 + shift)
        f1 = rng.random()
        a_rows.append({"id": f"x{i}", "reference": "r", "output": "a", "scores": {"accuracy": acc_a, "rouge_l": f1}})
        b_rows.append(
            {"id": f"x{i}", "reference": "r", "output": "b", "scores": {"accuracy": acc_b, "rouge_l": f1 + shift / 2}}
        )
    rng.shuffle(b_rows)  # file order must not matter: pairing is by id
    return _run_dir(tmp_path / "a", a_rows, {"macro_f1": 0.4}), _run_dir(tmp_path / "b", b_rows, {"macro_f1": 0.5})


def test_binary_metrics_get_mcnemar_and_continuous_a_permutation_test(tmp_path: Path) -> None:
    a, b = _pair_of_runs(tmp_path, shift=0.3)
    r = compare_runs(a, b, resamples=2000)
    rows = {x["metric"]: x for x in r["paired"]}
    acc = rows["accuracy"]
    assert acc["test"] == "McNemar exact"
    assert acc["p_value"] == mcnemar_exact(acc["only_a"], acc["only_b"])
    assert acc["ci95"][0] <= acc["delta"] <= acc["ci95"][1]
    rl = rows["rouge_l"]
    assert rl["test"].startswith("paired permutation")
    assert rl["delta"] == pytest.approx(0.15) and rl["p_value"] < 0.01  # a constant shift is unmistakable
    assert rl["effect_size"]["cohens_dz"] is None  # the differences do not vary: no spread to scale by
    assert {x["p_holm"] for x in r["paired"]} and any("Holm" in n for n in r["notes"])
    assert {x["metric"] for x in r["run_level"]} == {"macro_f1", "latency.ttft_p50_s"}
    assert r["flips"]["right_to_wrong"] == acc["only_a"] and r["flips"]["wrong_to_right"] == acc["only_b"]


def test_identical_runs_show_no_change(tmp_path: Path) -> None:
    a, _ = _pair_of_runs(tmp_path)
    r = compare_runs(a, a, resamples=1000)
    for x in r["paired"]:
        assert x["delta"] == 0 and x["p_value"] == 1.0 and not x["significant"]


def test_gate_signed_is_a_change_unsigned_a_value(tmp_path: Path) -> None:
    a, b = _pair_of_runs(tmp_path, shift=0.3)
    r = compare_runs(a, b, gate="rouge_l>=+0.1, macro_f1>=0.45, latency.ttft_p50_s<=+0", resamples=1000)
    assert [g["passed"] for g in r["gate"]] == [True, True, True]
    r = compare_runs(a, b, gate="rouge_l>=+0.2", resamples=1000)
    assert not r["gate_passed"]


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


@pytest.mark.parametrize("bad", ["accuracy=>0.1", "accuracy>=", ">=0.1", "accuracy >= +x"])
def test_unreadable_gate_clause_names_the_clause(bad: str) -> None:
    with pytest.raises(ConfigError, match="cannot read gate clause"):
        parse_gate(bad)


def test_runs_over_different_items_are_refused(tmp_path: Path) -> None:
    a, b = _pair_of_runs(tmp_path)
    rows = (b / "predictions.jsonl").read_text().splitlines()
    (b / "predictions.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(DataError, match="do not cover the same items"):
        compare_runs(a, b)


def test_cli_exit_codes(tmp_path: Path) -> None:
    a, b = _pair_of_runs(tmp_path, shift=0.3)
    cmd = [sys.executable, "-m", "tunelab", "compare", str(a), str(b), "--resamples", "1000"]
    ok = subprocess.run([*cmd, "--gate", "rouge_l>=+0.1"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run([*cmd, "--gate", "rouge_l>=+0.5", "--json"], capture_output=True, text=True)
    assert fail.returncode == 1
    assert json.loads(fail.stdout)["gate_passed"] is False
    assert fail.stderr.strip().startswith("error: regression gate failed: rouge_l>=+0.5")
    unknown = subprocess.run([*cmd, "--gate", "bleu>=+0.1"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "bleu" in unknown.stderr
    missing = subprocess.run([*cmd[:-4], str(a), str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no metrics.json" in missing.stderr
