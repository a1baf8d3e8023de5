"""The local judge: verdicts are schema-valid JSON by construction and the support score follows from them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write_jsonl
from tunelab.evaluate.judge import VERDICT_SCHEMA, claims


def test_claims_are_the_answers_sentences() -> None:
    # "ok" is too short to be a claim
    assert claims("The bank rose. Shares fell! Why? ok") == ["The bank rose.", "Shares fell!", "Why?"]
    assert claims("") == []


def test_judge_scores_answers_with_a_context(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tunelab.evaluate.command import EvalOptions, run_eval
    from tunelab.evaluate.run import EvalParams
    from tunelab.progress import Reporter

    class Quiet(Reporter):
        def __init__(self, events: Path | None = None) -> None:
            super().__init__(events=events, quiet=True)

    rows = [
        {"id": "a", "prompt": "What rose?", "completion": "The bank.", "context": "The bank rose sharply."},
        {"id": "b", "prompt": "Who won?", "completion": "The team."},  # no context: not judged
    ]
    data = write_jsonl(tmp_path / "g.jsonl", rows)
    params = EvalParams(batch_size=4, latency_samples=0, max_new_tokens=12)
    r = run_eval(
        EvalOptions(model=str(tiny_model_dir), data=data, out=tmp_path / "e", params=params, judge=str(tiny_model_dir)),
        Quiet,
    )
    assert r["model"]["judge"]["weights_sha256"]
    preds = [json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    allowed = VERDICT_SCHEMA["properties"]["verdict"]["enum"]  # type: ignore[index]
    a, b = preds
    assert "faithfulness.judge" not in b["scores"] and "judge" not in b
    verdicts = [c["verdict"] for c in a["judge"]]
    assert all(set(v) == {"verdict"} and v["verdict"] in allowed for v in verdicts)
    if verdicts:
        share = sum(v["verdict"] == "supported" for v in verdicts) / len(verdicts)
        assert a["scores"]["faithfulness.judge"] == share
    else:  # the tiny model said nothing checkable: nothing is unsupported
        assert a["scores"]["faithfulness.judge"] == 1.0
