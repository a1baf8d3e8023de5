from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch

from tunelab.config import RunConfig
from tunelab.data.formats import Record
from tunelab.models.chat import IGNORE, encode_chat
from tunelab.models.loading import load_model, load_tokenizer
from tunelab.progress import Reporter
from tunelab.train.engine import lr_factor, save_model, train


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


def _examples(tok, records=None):  # type: ignore[no-untyped-def]
    return [encode_chat(tok, r.messages) for r in (records or _records())]


def train_lora(model, tok, records, cfg, rep, **kw):  # type: ignore[no-untyped-def]
    return train(model, _examples(tok, records), cfg, rep, pad_id=int(tok.pad_token_id), **kw)


def _cfg(steps: int, precision: str = "fp32") -> RunConfig:
    """fp32 unless asked: these tests compare arithmetic that is the same in exact fp32, whatever the machine."""
    cfg = RunConfig()
    cfg.train.precision = precision  # type: ignore[assignment]
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


def test_bf16_trains_like_fp32_and_leaves_the_frozen_model_as_it_was(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    runs = {}
    for precision in ("fp32", "bf16"):
        model = load_model(tiny_model_dir)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        runs[precision] = res = train_lora(model, tok, _records(), _cfg(12, precision), Reporter(quiet=True))
        after = res.model.get_base_model().state_dict()
        for k, v in before.items():  # the frozen weights come back in fp32, bit for bit
            got = after.get(k.replace(".weight", ".base_layer.weight"), after.get(k))
            assert got is not None and got.dtype == torch.float32 and torch.equal(got, v), k
        assert all(p.dtype == torch.float32 for p in res.model.parameters() if p.requires_grad)
    assert runs["bf16"].precision == "bf16 autocast, frozen weights in bf16"
    lf = [r["loss"] for r in runs["fp32"].curve]
    lb = [r["loss"] for r in runs["bf16"].curve]
    assert lb[-1] < 0.5 * lb[0]
    assert lb == pytest.approx(lf, rel=0.05)  # bf16 rounds (3 significant digits); the curve stays the same


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
    save_model(res.model, tmp_path / "model")
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


class _Crash(Reporter):
    """Stops the run (as a kill would) when the given step has been taken."""

    def __init__(self, at: int):
        super().__init__(quiet=True)
        self.at = at

    def event(self, kind: str, **data: object) -> None:
        if kind == "train_step" and data["step"] == self.at:
            raise KeyboardInterrupt


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _resume_cfg(precision: str = "fp32") -> RunConfig:
    cfg = _cfg(7, precision)
    cfg.batch.size = 3  # epochs do not align with steps: the data position matters
    cfg.schedule.kind = "cosine"
    cfg.schedule.warmup_steps = 2
    cfg.method.dropout = 0.1  # the RNG state matters too
    cfg.checkpoint.every = 2
    return cfg


def _crash_and_resume(model_dir: Path, tmp_path: Path, damage: bool, precision: str = "fp32"):  # type: ignore[no-untyped-def]
    """An uninterrupted run, and a run stopped after step 5 (checkpoints at 2 and 4) then resumed."""
    tok = load_tokenizer(model_dir)
    cfg = _resume_cfg(precision)
    full = train_lora(load_model(model_dir), tok, None, cfg, Reporter(quiet=True), run_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train_lora(load_model(model_dir), tok, None, cfg, _Crash(at=5), run_dir=tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    if damage:
        weights = tmp_path / "b" / "checkpoints" / "step-000004" / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])  # truncated, as by a full disk
    resumed = train_lora(
        load_model(model_dir), tok, None, cfg, Reporter(quiet=True), run_dir=tmp_path / "b", resume=True
    )
    return full, resumed


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(tiny_model_dir: Path, tmp_path: Path, precision: str) -> None:
    from tunelab.train.engine import trainable_state

    full, resumed = _crash_and_resume(tiny_model_dir, tmp_path, damage=False, precision=precision)
    assert resumed.resumed_from == 4
    assert _max_diff(trainable_state(full.model), trainable_state(resumed.model)) <= 1e-6
    assert [r["loss"] for r in resumed.curve] == [r["loss"] for r in full.curve]
    curve_file = [json.loads(x) for x in (tmp_path / "b" / "train" / "curve.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in curve_file] == [r["loss"] for r in full.curve]


def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tunelab.train.engine import trainable_state

    full, resumed = _crash_and_resume(tiny_model_dir, tmp_path, damage=True)
    assert resumed.resumed_from == 2
    assert resumed.skipped_checkpoints and "weights.safetensors" in resumed.skipped_checkpoints[0]
    assert _max_diff(trainable_state(full.model), trainable_state(resumed.model)) <= 1e-6


def test_resume_without_a_good_checkpoint_is_a_clear_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tunelab.errors import ConfigError

    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        train_lora(load_model(tiny_model_dir), tok, None, _cfg(2), Reporter(quiet=True), run_dir=tmp_path, resume=True)


def test_packed_examples_do_not_see_each_other(tiny_model_dir: Path) -> None:
    from tunelab.models.chat import Encoded
    from tunelab.train.attention import packed_attention
    from tunelab.train.packing import pack

    model = load_model(tiny_model_dir)
    dec = model.get_decoder()
    a = Encoded(list(range(5, 17)), [IGNORE] * 12)
    b = Encoded(list(range(30, 39)), [IGNORE] * 9)
    b2 = Encoded(list(range(60, 72)), [IGNORE] * 12)  # a different first example
    with torch.no_grad():
        alone = dec(input_ids=torch.tensor([b.input_ids])).last_hidden_state[0]
        with packed_attention(model):
            for first in (a, b2):
                p = pack([first, b])
                out = dec(input_ids=p.input_ids, position_ids=p.position_ids, cu_seqlens_tunelab=p.cu_seqlens)
                got = out.last_hidden_state[0, p.cu_seqlens[1] :]
                assert torch.allclose(got, alone, atol=1e-5)
    assert model.config._attn_implementation != "tunelab_varlen"  # restored for generation


def test_rounded_packing_changes_the_shapes_and_nothing_else(tiny_model_dir: Path) -> None:
    from tunelab.config import MethodSection
    from tunelab.train.attention import packed_attention
    from tunelab.train.engine import _batch, _inner, _step_module, wrap

    tok = load_tokenizer(tiny_model_dir)
    model = wrap(load_model(tiny_model_dir), MethodSection())
    step = _step_module(model, packing=True)
    got = []
    for round_to in [(1, 1), (8, 48)]:
        batch, real = _batch(_examples(tok), True, int(tok.pad_token_id), torch.device("cpu"), round_to)
        model.zero_grad()
        with packed_attention(_inner(model)):
            loss = step(batch)
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        got.append((batch, real, float(loss.detach()), grads))
    (b1, r1, l1, g1), (b2, r2, l2, g2) = got
    assert b2["input_ids"].shape[1] % 48 == 0 and b2["input_ids"].shape[1] > b1["input_ids"].shape[1]
    assert all((e - s) % 8 == 0 for s, e in itertools.pairwise(b2["cu_seqlens"].tolist()))
    assert b2["cu_seqlens"].tolist()[-1] < b2["input_ids"].shape[1]  # the row's filler is no attention span
    assert r1 == r2 == sum(len(e.input_ids) for e in _examples(tok))  # real tokens, not the padding
    assert l2 == pytest.approx(l1, rel=1e-6)
    for k in g1:
        assert float((g1[k] - g2[k]).abs().max()) <= 1e-5 * float(g1[k].abs().max()), k  # sums in another order


def test_loss_weights_count_in_packed_and_padded_batches_alike(tiny_model_dir: Path) -> None:
    from tunelab.models.chat import Encoded
    from tunelab.train.attention import packed_attention
    from tunelab.train.engine import _batch, _inner, _step_module
    from tunelab.train.packing import trained_weight

    model = load_model(tiny_model_dir)
    a = Encoded(list(range(5, 17)), [IGNORE] * 6 + list(range(40, 46)))
    b = Encoded(list(range(30, 39)), [IGNORE] * 7 + [50, 51])
    wa = [0.0] * 6 + [0.5] * 6
    wb = [0.0] * 7 + [2.0, 3.0]
    step = _step_module(model, packing=True)
    plain = _step_module(model, packing=False)
    with torch.no_grad():
        with packed_attention(_inner(model)):
            unweighted = [float(step(_batch([e], True, 0, torch.device("cpu"))[0])) for e in (a, b)]
            per_label = []
            for e in (a, b):  # one trained label at a time: its own loss
                for k, t in enumerate(e.labels):
                    if t != IGNORE:
                        one = Encoded(e.input_ids, [IGNORE] * k + [t] + [IGNORE] * (len(e.labels) - k - 1))
                        per_label.append(float(step(_batch([one], True, 0, torch.device("cpu"))[0])))
            weighted = float(step(_batch([Encoded(a.input_ids, a.labels, wa), b], True, 0, torch.device("cpu"))[0]))
        padded = float(plain(_batch([Encoded(a.input_ids, a.labels, wa), b], False, 0, torch.device("cpu"))[0]))
    assert sum(per_label[:6]) == pytest.approx(unweighted[0], rel=1e-4)
    expected = 0.5 * sum(per_label[:6]) + unweighted[1]  # b sets no weights: 1 each
    assert weighted == pytest.approx(expected, rel=1e-4)
    assert padded == pytest.approx(expected, rel=1e-4)
    assert trained_weight(Encoded(a.input_ids, a.labels, wa)) == pytest.approx(3.0)
    assert trained_weight(Encoded(b.input_ids, b.labels, wb)) == pytest.approx(5.0)
    assert trained_weight(b) == 2


def test_packed_padded_and_micro_batched_training_agree(tiny_model_dir: Path) -> None:
    from tunelab.train.engine import trainable_state

    tok = load_tokenizer(tiny_model_dir)
    results = []
    for packing, max_tokens in [(True, 4096), (False, 4096), (True, 40)]:  # 40 tokens: one example per pass
        cfg = _cfg(3)
        cfg.batch.packing = packing
        cfg.batch.max_tokens = max_tokens
        res = train_lora(load_model(tiny_model_dir), tok, None, cfg, Reporter(quiet=True))
        results.append(res)
    ref = trainable_state(results[0].model)
    for other in results[1:]:
        # other shapes sum in another order (MKL and oneDNN pick kernels by shape, differently on AMD and Intel)
        _weights_agree(ref, trainable_state(other.model), 1e-5)
        assert [r["loss"] for r in other.curve] == pytest.approx([r["loss"] for r in results[0].curve], rel=1e-4)
    # Packing forwards only real tokens; padding forwards more.
    assert results[0].real_tokens == results[2].real_tokens
    assert results[1].real_tokens == results[0].real_tokens  # counted without the padding


def test_full_fine_tuning_changes_every_weight_and_saves_a_plain_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model_dir)
    cfg = _cfg(20)
    cfg.method.kind = "full"
    cfg.optimizer.lr = 3e-3
    before = {k: v.clone() for k, v in load_model(tiny_model_dir).state_dict().items()}
    res = train_lora(load_model(tiny_model_dir), tok, None, cfg, Reporter(quiet=True))
    assert res.trainable_params == res.total_params
    assert res.curve[-1]["loss"] < 0.5 * res.curve[0]["loss"]
    save_model(res.model, tmp_path / "model", tok)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    sd = loaded.state_dict()
    assert not torch.equal(sd["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    ids = torch.tensor([tok("The striker scored.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, res.model(ids).logits, atol=1e-5)
    assert (tmp_path / "model" / "tokenizer.json").exists()


def test_step_plan_is_a_pure_function_of_the_step() -> None:
    from tunelab.train.engine import StepPlan

    a = StepPlan(7, 3, seed=1)
    first = [a.indices(s) for s in range(7)]
    b = StepPlan(7, 3, seed=1)
    assert [b.indices(s) for s in (6, 2, 0)] == [first[6], first[2], first[0]]
    flat = [i for batch in first for i in batch]
    assert sorted(flat[:7]) == list(range(7)) and sorted(flat[7:14]) == list(range(7))  # whole epochs


def _pairs(tok):  # type: ignore[no-untyped-def]
    out = []
    for r in _records():
        wrong = "tech" if r.messages[-1]["content"] != "tech" else "sport"
        rejected = [*r.messages[:-1], {"role": "assistant", "content": wrong}]
        out.append((encode_chat(tok, r.messages), encode_chat(tok, rejected)))
    return out


@pytest.mark.parametrize(
    ("kind", "precision"), [("lora", "fp32"), ("full", "fp32"), ("lora", "bf16"), ("full", "bf16")]
)
def test_dpo_starts_at_log_2_and_learns_to_prefer_the_chosen_answers(
    tiny_model_dir: Path, kind: str, precision: str
) -> None:
    tok = load_tokenizer(tiny_model_dir)
    cfg = _cfg(12, precision)
    cfg.method.objective = "dpo"
    cfg.method.kind = kind
    cfg.method.beta = 0.5
    cfg.optimizer.lr = 1e-2 if kind == "lora" else 1e-3
    res = train(load_model(tiny_model_dir), _pairs(tok), cfg, Reporter(quiet=True), pad_id=int(tok.pad_token_id))
    first, last = res.curve[0], res.curve[-1]
    # At the start the policy is the reference: every pair's reward margin is 0, the loss is ln 2.
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert last["loss"] < 0.3
    assert last["reward_accuracy"] == 1.0 and last["reward_margin"] > 0


def test_dpo_needs_pairs(tiny_model_dir: Path) -> None:
    from tunelab.errors import ConfigError

    tok = load_tokenizer(tiny_model_dir)
    cfg = _cfg(1)
    cfg.method.objective = "dpo"
    with pytest.raises(ConfigError, match="pairs"):
        train(load_model(tiny_model_dir), _examples(tok), cfg, Reporter(quiet=True))


def test_fused_lora_forward_equals_peft_and_steps_aside_when_disabled(tiny_model_dir: Path) -> None:
    from tunelab.config import MethodSection
    from tunelab.train.engine import wrap
    from tunelab.train.fused import fused_lora

    model = wrap(load_model(tiny_model_dir), MethodSection(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at zero: make the adapter matter
    ids = torch.tensor([[5, 9, 13, 21, 34, 55]])
    ref = model(ids).logits
    with torch.no_grad(), model.disable_adapter():
        off = model(ids).logits
    with fused_lora(model) as n:
        assert n == 2 * 7  # every projection of both layers
        fused = model(ids).logits
        with torch.no_grad(), model.disable_adapter():
            assert torch.allclose(model(ids).logits, off, atol=1e-6)  # peft's path when disabled
    assert not torch.allclose(ref, off, atol=1e-3)
    assert torch.allclose(fused, ref, atol=1e-5)
    fused.sum().backward()
    g_fused = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model(ids).logits.sum().backward()
    for k, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, g_fused[k], rtol=1e-4, atol=1e-5), k


def _weights_agree(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    """Two runs whose arithmetic differs only in rounding: Adam divides by sqrt(v) + eps, so the few elements
    whose gradient is near eps turn a rounding difference into up to a whole step (lr 1e-2 here); 99.9% of the
    elements must agree to `tol` and none by more than two steps."""
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert float(diff.quantile(0.999)) < tol and float(diff.max()) < 2e-2, (
        float(diff.quantile(0.999)),
        float(diff.max()),
    )


_NO_CXX = shutil.which("g++") is None and shutil.which("gcc") is None


@pytest.mark.parametrize(
    ("option", "weight_tol"),
    [
        ("gradient_checkpointing", 1e-5),
        # Inductor's fused kernels round differently; Adam at lr 1e-2 moves a weight up to 1e-2 a step.
        pytest.param("compile", 1e-3, marks=pytest.mark.skipif(_NO_CXX, reason="inductor needs a C++ compiler")),
    ],
)
def test_speed_and_memory_options_train_like_the_default(tiny_model_dir: Path, option: str, weight_tol: float) -> None:
    from tunelab.train.engine import trainable_state

    tok = load_tokenizer(tiny_model_dir)
    runs = []
    for on in (False, True):
        cfg = _cfg(3)
        setattr(cfg.train, option, on)
        runs.append(train_lora(load_model(tiny_model_dir), tok, None, cfg, Reporter(quiet=True)))
    assert [r["loss"] for r in runs[1].curve] == pytest.approx([r["loss"] for r in runs[0].curve], rel=1e-4)
    _weights_agree(trainable_state(runs[0].model), trainable_state(runs[1].model), weight_tol)
