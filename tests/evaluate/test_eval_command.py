"""`tunelab eval` end to end on a tiny model: every item kind, reproducible predictions, bad input exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import chat, write_jsonl
from tunelab.errors import ModelError
from tunelab.evaluate.command import EvalOptions, run_eval
from tunelab.evaluate.run import EvalParams
from tunelab.progress import Reporter

TUNELAB = [sys.executable, "-m", "tunelab"]


class Quiet(Reporter):
    def __init__(self, events: Path | None = None) -> None:
        super().__init__(events=events, quiet=True)


def _eval(model: Path, data: Path, out: Path, **kw: object) -> dict[str, object]:
    params = EvalParams(batch_size=3, latency_samples=2, max_new_tokens=8)
    return run_eval(EvalOptions(model=str(model), data=data, out=out, params=params, **kw), Quiet)  # type: ignore[arg-type]


ROWS = {
    "classification": [
        {"id": f"c{i}", "text": t, "label": lab}
        for i, (t, lab) in enumerate(
            [("The striker scored twice", "sport"), ("The minister said", "politics"), ("Shares rose", "business")] * 2
        )
    ],
    "generation": [
        {
            "id": "g1",
            "prompt": "Where is the bank?",
            "completion": "The bank rose sharply.",
            "context": "The bank rose.",
        },
        {**chat("Name a sport.", "football"), "id": "g2"},
    ],
    "multiple_choice": [
        {
            "id": f"m{i}",
            "context": "The team won the cup final.",
            "question": "Which topic?",
            "choices": ["sport", "politics", "the market rallied"],
            "answer": i % 3,
        }
        for i in range(4)
    ],
    "perplexity": [{"id": "p1", "text": "The market rallied as shares rose."}, {"id": "p2", "text": "The film won."}],
    "code": [
        {"id": "k1", "prompt": "def add(a, b):\n", "tests": "assert add(1, 2) == 3"},
        {"id": "k2", "prompt": "def neg(a):\n", "tests": "assert neg(1) == -1"},
    ],
}
HEADLINE = {
    "classification": {"accuracy", "accuracy_constrained", "macro_f1"},
    "generation": {"exact_match", "token_f1", "rouge_l", "chrf", "faithfulness.support"},
    "multiple_choice": {"accuracy", "accuracy_norm"},
    "perplexity": {"perplexity", "nll_per_token", "bits_per_byte"},
    "code": {"pass@1"},
}


@pytest.mark.parametrize("kind", list(ROWS))
def test_each_kind_writes_predictions_metrics_and_is_reproducible(
    tiny_model_dir: Path, tmp_path: Path, kind: str
) -> None:
    data = write_jsonl(tmp_path / f"{kind}.jsonl", ROWS[kind])
    r1 = _eval(tiny_model_dir, data, tmp_path / "e1")
    _eval(tiny_model_dir, data, tmp_path / "e2")
    assert r1["kind"] == kind and r1["n"] == len(ROWS[kind])
    metrics = r1["metrics"]
    assert isinstance(metrics, dict) and HEADLINE[kind] <= set(metrics)
    preds = [json.loads(x) for x in (tmp_path / "e1" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == [row["id"] for row in ROWS[kind]]
    assert all({"id", "input", "reference", "output", "scores"} <= set(p) for p in preds)
    # same model, data and seed: byte-identical predictions (timings live in latency.jsonl)
    assert (tmp_path / "e1" / "predictions.jsonl").read_bytes() == (tmp_path / "e2" / "predictions.jsonl").read_bytes()
    m = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    assert m["data"]["files"][0]["sha256"] and len(m["model"]["weights_sha256"]) == 64 and m["seed"] == 0
    assert len((tmp_path / "e1" / "latency.jsonl").read_text().splitlines()) == 2
    assert m["latency"]["samples"] == 2 and m["latency"]["ttft_p50_s"] > 0


def test_constrained_classification_picks_the_most_likely_label(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "c.jsonl", ROWS["classification"])
    _eval(tiny_model_dir, data, tmp_path / "e")
    for p in (json.loads(x) for x in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()):
        lp = p["label_logprobs"]
        assert p["predicted_constrained"] == max(lp, key=lp.get)
        assert p["scores"]["accuracy_constrained"] == float(p["predicted_constrained"] == p["reference"])


def test_adapter_eval_and_compare_through_the_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from tunelab.models.loading import load_model

    model = get_peft_model(
        load_model(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(tmp_path / "adapter")
    data = write_jsonl(tmp_path / "mc.jsonl", ROWS["multiple_choice"])
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--latency-samples", "0"]
    base = subprocess.run([*TUNELAB, "eval", *common, "--out", str(tmp_path / "base")], capture_output=True, text=True)
    assert base.returncode == 0, base.stderr
    tuned = subprocess.run(
        [*TUNELAB, "eval", *common, "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "tuned"), "--json"],
        capture_output=True,
        text=True,
    )
    assert tuned.returncode == 0, tuned.stderr
    assert json.loads(tuned.stdout)["model"]["adapter_sha256"]
    b = [json.loads(x)["choice_logprobs"] for x in (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()]
    t = [json.loads(x)["choice_logprobs"] for x in (tmp_path / "tuned" / "predictions.jsonl").read_text().splitlines()]
    assert b != t  # the adapter is applied
    cmp = subprocess.run(
        [*TUNELAB, "compare", str(tmp_path / "base"), str(tmp_path / "tuned"), "--json", "--resamples", "1000"],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stderr
    assert {r["metric"] for r in json.loads(cmp.stdout)["paired"]} == {"accuracy", "accuracy_norm"}


def test_a_model_that_emits_nothing_is_an_error_not_a_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch

    from tunelab.models.loading import load_model, load_tokenizer

    mute = tmp_path / "mute"
    model = load_model(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit 0: the first token (a special one) always wins
    model.save_pretrained(mute)
    load_tokenizer(tiny_model_dir).save_pretrained(mute)
    data = write_jsonl(tmp_path / "g.jsonl", ROWS["generation"])
    with pytest.raises(ModelError, match="produced no text for any of the 2 items"):
        _eval(mute, data, tmp_path / "e")
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--task", "no-such-task"], "unknown task"),
        ([], "exactly one of --task NAME or --data FILE"),
        (["--data", "MISSING"], "no such file"),
        (["--data", "BAD"], "bad.jsonl:2 [messages]: no reference"),
    ],
)
def test_bad_eval_input_exits_2_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), {"messages": [{"role": "user", "content": "q"}]}])
    args = [str(bad) if a == "BAD" else str(tmp_path / "missing.jsonl") if a == "MISSING" else a for a in args]
    res = subprocess.run(
        [*TUNELAB, "eval", "--model", str(tiny_model_dir), *args, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr
