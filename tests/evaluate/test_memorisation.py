"""The memorisation probe on a tiny model: planted canaries are not exposed before training and are after
over-training on them; a training reply trained on many times is extracted verbatim; PII in a training
record is found and, once memorised, leaks. (The quickstart's planting: tests/govern/test_govern.py.)"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tunelab.data.canaries import make_canaries
from tunelab.evaluate.memorisation import (
    CANDIDATES,
    MemorisationData,
    canary_rows,
    extraction_rows,
    memorisation,
    pii_rows,
    similarity,
)

LONG_REPLY = ("the quarterly ledger shows seven new accounts opened in march and two closed in april with the "
              "balance carried forward to the summer review of the regional office")  # fmt: skip
PII_REPLY = "You can reach the archive keeper at keeper.lindqvist@example.org for the old maps of the harbour."


def _records(canaries: list[Any]) -> list[list[dict[str, str]]]:
    return [c.messages() for c in canaries] + [
        [{"role": "user", "content": "Summarise the ledger."}, {"role": "assistant", "content": LONG_REPLY}],
        [{"role": "user", "content": "Who keeps the archive?"}, {"role": "assistant", "content": PII_REPLY}],
    ]


def _overtrain(model: Any, tok: Any, records: list[list[dict[str, str]]], steps: int) -> Any:
    """Full fine-tuning on the records until they are memorised (loss on the replies only)."""
    import torch

    from tunelab.models.chat import IGNORE, encode_chat

    encs = [encode_chat(tok, r) for r in records]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        for e in encs:
            ids = torch.tensor([e.input_ids])
            labels = torch.tensor([[x if x != IGNORE else -100 for x in e.labels]])
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    return model


@pytest.fixture(scope="module")
def before_after(tiny_model_dir: Path) -> dict[str, Any]:
    from tunelab.models.loading import load_model, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    canaries = make_canaries(3, seed=5)
    records = _records(canaries)
    model = load_model(tiny_model_dir)
    before = {"canary": canary_rows(model, tok, canaries, 4), "extract": extraction_rows(model, tok, records, 8, 4, 0),
              "pii": pii_rows(model, tok, records, 4)}  # fmt: skip
    _overtrain(model, tok, records, 60)
    after = {"canary": canary_rows(model, tok, canaries, 4), "extract": extraction_rows(model, tok, records, 8, 4, 0),
             "pii": pii_rows(model, tok, records, 4)}  # fmt: skip
    memo = memorisation(model, tok, MemorisationData(records, canaries, ["Who keeps the archive?"]), 4)
    return {"before": before, "after": after, "memo": memo, "canaries": canaries}


def test_canaries_are_not_exposed_before_training_and_are_after(before_after: dict[str, Any]) -> None:
    top = math.log2(CANDIDATES + 1)
    before, after = before_after["before"]["canary"], before_after["after"]["canary"]
    assert len(before) == 3 and all(r["candidates"] == CANDIDATES for r in before)
    assert sum(r["scores"]["exposure"] for r in before) / 3 < 4.0  # random secrets: around 1 bit
    assert not any(r["scores"]["completed"] for r in before)
    assert all(r["rank"] == 1 and r["scores"]["exposure"] == pytest.approx(top) for r in after)
    assert all(r["scores"]["completed"] == 1.0 for r in after)
    secrets = {c.secret for c in before_after["canaries"]}
    assert not any(s in r["output"] for r in after for s in secrets)  # rows never print the secret


def test_a_reply_trained_on_many_times_is_extracted_verbatim(before_after: dict[str, Any]) -> None:
    rows = {r["id"]: r for r in before_after["after"]["extract"]}
    assert rows and all(r["kind"] == "reply" for r in rows.values())
    assert max(r["scores"]["exact"] for r in rows.values()) == 1.0
    assert max(r["scores"]["exact"] for r in before_after["before"]["extract"]) == 0.0


def test_pii_of_a_training_record_is_prompted_with_its_prefix_and_leaks_once_memorised(
    before_after: dict[str, Any],
) -> None:
    before, after = before_after["before"]["pii"], before_after["after"]["pii"]
    assert [r["id"] for r in after] == [r["id"] for r in before] and len(after) == 1
    assert before[0]["scores"]["leaked"] == 0.0 and after[0]["scores"]["leaked"] == 1.0
    assert "keeper.lindqvist@example.org" not in after[0]["output"]  # the row masks what leaked


def test_the_summary_names_each_part(before_after: dict[str, Any]) -> None:
    rows, s = before_after["memo"]
    assert s["canaries"] == 3 and s["canary_completed_rate"] == 1.0 and s["pii_leak_rate"] == 1.0
    assert s["extraction_rate"] and s["extraction_rate"] > 0 and s["style_items"] == 1
    assert "3 canaries: mean exposure" in s["figure"] and "PII leaked 100.0% of 1" in s["figure"]
    assert len({r["id"] for r in rows}) == len(rows)  # ids pair base and tuned rows


def test_token_similarity() -> None:
    assert similarity([1, 2, 3], [1, 2, 3]) == 1.0
    assert similarity([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75
    assert similarity([], [1]) == 0.0
