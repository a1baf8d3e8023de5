from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.config import RunConfig
from tunelab.data.formats import Record
from tunelab.models.loading import load_model, load_tokenizer
from tunelab.progress import Reporter
from tunelab.train.lora import lr_factor, save_adapter, train_lora


def _records() -> list[Record]:
    pairs = [
        ("The striker scored twice.", "sport"),
        ("Shares rose on profits.", "business"),
        ("The new phone chip.", "tech"),
        ("The minister spoke.", "politics"),
    ]
    return [
        Record("mem", i, f"r{i}", [{"role": "user", "content": u}, {"role": "assistant", "content": a}])
        for i, (u, a) in enumerate(pairs)
    ]


def _cfg(steps: int) -> RunConfig:
    cfg = RunConfig()
    cfg.train.max_steps = steps
    cfg.batch.size = 4
    cfg.optimizer.lr = 1e-2
    cfg.schedule.warmup_steps = 0
    cfg.schedule.kind = "constant"
    cfg.train.threads = 1
    return cfg


def test_lora_learns_a_tiny_dataset_and_only_adapters_change(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_lora(model, tok, _records(), _cfg(30), Reporter(quiet=True))
    losses = [r["loss"] for r in res.curve]
    assert len(losses) == 30
    assert losses[-1] < 0.25 * losses[0]
    assert res.trainable_params < res.total_params
    base_sd = res.model.get_base_model().state_dict()
    for k, v in frozen.items():
        key = k.replace(".weight", ".base_layer.weight") if k.replace(".weight", ".base_layer.weight") in base_sd else k
        assert torch.equal(base_sd[key], v), k  # base weights untouched


def test_training_is_reproducible(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    a = train_lora(load_model(tiny_model_dir), tok, _records(), _cfg(3), Reporter(quiet=True))
    b = train_lora(load_model(tiny_model_dir), tok, _records(), _cfg(3), Reporter(quiet=True))
    assert [r["loss"] for r in a.curve] == [r["loss"] for r in b.curve]


def test_saved_adapter_loads_with_plain_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model_dir)
    res = train_lora(load_model(tiny_model_dir), tok, _records(), _cfg(5), Reporter(quiet=True))
    save_adapter(res.model, tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "model")
    ids = torch.tensor([tok("The striker scored.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, res.model(ids).logits, atol=1e-5)


@pytest.mark.parametrize(
    ("step", "kind", "expected"),
    [(0, "cosine", 0.5), (1, "cosine", 1.0), (11, "cosine", 0.0), (6, "linear", 0.5), (5, "constant", 1.0)],
)
def test_lr_schedule(step: int, kind: str, expected: float) -> None:
    assert lr_factor(step, 11, 1, kind) == pytest.approx(expected, abs=1e-9)
