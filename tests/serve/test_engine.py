"""Continuous batching: requests that join a running batch get exactly the tokens they would get alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tunelab.serve.engine import Engine, GenRequest, make_runner


def _alone(model, prompt: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    from tunelab.evaluate.scoring import prefill_score_decode

    _, gen = prefill_score_decode(model, [prompt], max_new_tokens=n, eos_ids=())
    assert gen is not None
    return gen[0]


def _until(cond, seconds: float = 60) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


@pytest.mark.parametrize("kind", ["lean", "hf"])
def test_joining_mid_batch_and_cancelling_change_no_ones_tokens(tiny_model_dir: Path, kind: str) -> None:
    from tunelab.models.loading import load_model

    model = load_model(tiny_model_dir)
    eng = Engine(model, max_batch=4, runner=make_runner(load_model(tiny_model_dir), kind=kind, max_rows=4))
    eng.start()
    try:
        prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21], [30, 31, 32, 33, 34], [40, 41, 42]]
        out: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
        ends: dict[int, str] = {}
        done = threading.Event()

        def cb(i: int):  # type: ignore[no-untyped-def]
            def on(tok: int | None, reason: str | None) -> None:
                if tok is not None:
                    out[i].append(tok)
                else:
                    ends[i] = reason or ""
                    if len(ends) == len(prompts):
                        done.set()

            return on

        reqs = [GenRequest(prompt=p, max_tokens=12, on_token=cb(i)) for i, p in enumerate(prompts)]
        eng.submit(reqs[0])
        _until(lambda: len(out[0]) >= 3 or bool(ends))  # the others join a batch that is already decoding
        eng.submit(reqs[1])
        eng.submit(reqs[2])
        _until(lambda: len(out[2]) >= 2 or 2 in ends)
        reqs[2].cancelled.set()  # a client that goes away frees its slot
        eng.submit(reqs[3])
        assert done.wait(60)
        for i in (0, 1, 3):
            assert ends[i] == "length" and out[i] == _alone(model, prompts[i], 12), i
        assert ends[2] == "cancelled" and out[2] == _alone(model, prompts[2], 12)[: len(out[2])]
        assert eng.running == 0
    finally:
        eng.stop()


def test_seeded_sampling_is_reproducible(tiny_model_dir: Path) -> None:
    from tunelab.models.loading import load_model

    eng = Engine(load_model(tiny_model_dir), max_batch=2)
    eng.start()
    try:
        runs = []
        for seed in (1, 1, 2):
            toks: list[int] = []
            ev = threading.Event()
            eng.submit(
                GenRequest(
                    prompt=[5, 6, 7],
                    max_tokens=10,
                    temperature=1.0,
                    top_p=0.9,
                    seed=seed,
                    on_token=lambda t, r, toks=toks, ev=ev: toks.append(t) if t is not None else ev.set(),
                )
            )
            assert ev.wait(30)
            runs.append(toks)
        assert runs[0] == runs[1] and runs[0] != runs[2]
    finally:
        eng.stop()


def test_min_tokens_the_watermark_and_logit_bias_shape_each_rows_sampling(tiny_model_dir: Path) -> None:
    from tunelab.govern.watermark import Watermark
    from tunelab.models.loading import load_model

    model = load_model(tiny_model_dir)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    eng = Engine(model, max_batch=4)
    eng.start()

    def run(max_tokens: int = 8, **kw: object) -> tuple[list[int], str]:
        toks: list[int] = []
        why: list[str] = []
        ev = threading.Event()

        def cb(t: int | None, r: str | None) -> None:
            if t is not None:
                toks.append(t)
            if r is not None:
                why.append(r)
                ev.set()

        eng.submit(GenRequest(prompt=[5, 6, 7], max_tokens=max_tokens, on_token=cb, **kw))  # type: ignore[arg-type]
        assert ev.wait(30)
        return toks, why[0]

    try:
        free, _ = run()
        first = free[0]
        assert run(stop_ids=frozenset({first})) == ([], "stop")  # greedy's first token is the stop token
        held, why = run(stop_ids=frozenset({first}), min_tokens=8)
        assert len(held) == 8 and why == "length" and first not in held
        wm = Watermark(b"k" * 32, delta=50.0)  # so strong that every token is green
        marked, why = run(watermark=wm)
        assert why == "length", why
        assert len(marked) == 8 and all(wm.is_green(p, t, vocab) for p, t in zip([7, *marked], marked, strict=False))
        banned, _ = run(logit_bias={first: -100.0})  # OpenAI's logit_bias: -100 bans a token, +100 forces it
        assert len(banned) == 8 and first not in banned
        forced, _ = run(logit_bias={9: 100.0, first: -5.0}, temperature=1.0, seed=0)
        assert forced == [9] * 8
        # presence and frequency penalties: greedy on logits minus (presence + frequency * count) of each token
        # generated so far, as a plain loop over the model computes them
        import torch

        want: list[int]
        counts: dict[int, int]
        ids, want, counts = [5, 6, 7], [], {}
        with torch.inference_mode():
            for _ in range(40):
                lg = model(torch.tensor([ids])).logits[0, -1].float()
                for t, c in counts.items():
                    lg[t] -= 1.5 + 0.5 * c
                t = int(lg.argmax())
                want.append(t)
                ids.append(t)
                counts[t] = counts.get(t, 0) + 1
        penalised, _ = run(40, presence_penalty=1.5, frequency_penalty=0.5)
        free, _ = run(40)
        assert len(set(free)) < 40 and penalised == want and penalised != free, (penalised, free)
    finally:
        eng.stop()


def test_decode_layout_keeps_the_models_outputs(tiny_model_dir: Path) -> None:
    import torch

    from tunelab.models.loading import load_model
    from tunelab.serve.engine import decode_layout

    a, b = load_model(tiny_model_dir), load_model(tiny_model_dir)
    n = decode_layout(b)
    assert n == sum(1 for m in a.modules() if isinstance(m, torch.nn.Linear))
    assert all(
        not m.weight.is_contiguous() and m.weight.t().is_contiguous()
        for m in b.modules()
        if isinstance(m, torch.nn.Linear)
    )
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    with torch.inference_mode():
        assert torch.allclose(a(input_ids=ids).logits, b(input_ids=ids).logits, atol=1e-5)


def _lora_adapter(model_dir: Path, out: Path, seed: int, targets: list[str]) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.models.loading import load_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        load_model(model_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
    )
    peft_model.save_pretrained(out)
    return out


def test_lean_decoder_equals_transformers_and_peft_with_mixed_adapters(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rows with different adapters (and none) in one batch, rows joining a running batch with longer and
    shorter prompts, rows leaving, a cache that grows past its first capacity: the lean decoder's logits
    equal the transformers + peft forward of each sequence alone."""
    import torch
    from peft import PeftModel

    from tunelab.models.loading import load_model
    from tunelab.serve.lean import LeanModel

    a = _lora_adapter(tiny_model_dir, tmp_path / "a", 1, ["q_proj", "k_proj", "v_proj", "o_proj"])
    b = _lora_adapter(tiny_model_dir, tmp_path / "b", 2, ["gate_proj", "up_proj", "down_proj", "v_proj"])
    ref = PeftModel.from_pretrained(load_model(tiny_model_dir), a, adapter_name="first")
    ref.load_adapter(b, adapter_name="second")
    ref.eval()
    lean = LeanModel(load_model(tiny_model_dir), max_rows=4)
    lean.load_adapter(a, "first")
    lean.load_adapter(b, "second")

    def alone(ids: list[int], adapter: str | None) -> torch.Tensor:
        x = torch.tensor([ids])
        with torch.inference_mode():
            if adapter is None:
                with ref.disable_adapter():
                    return ref(input_ids=x).logits[0, -1]
            ref.set_adapter(adapter)
            return ref(input_ids=x).logits[0, -1]

    # adapter names that are in no other key: peft 0.22 reports as missing every key holding the loaded
    # adapter's name as a substring ("b" is in "base_model"), and the test's warnings are errors
    seqs = {
        0: ([5, 6, 7, 8], "first"), 1: ([9, 10], None), 2: (list(range(20, 60)) * 8, "second"),
        3: ([11, 12, 13], "second"),
    }  # fmt: skip

    def check(rows: list[int], got: torch.Tensor) -> None:
        for r, g in zip(rows, got, strict=True):
            torch.testing.assert_close(g, alone(*seqs[r]), atol=1e-4, rtol=1e-4)

    def steps(rows: list[int], first: int, n: int) -> None:
        for t in range(n):
            toks = [first + t + r for r in rows]
            for r, tok in zip(rows, toks, strict=True):
                seqs[r][0].append(tok)
            check(rows, lean.step(toks, [seqs[r][1] for r in rows]))

    with torch.inference_mode():
        check([0, 1], lean.add([seqs[0][0], seqs[1][0]], [seqs[0][1], seqs[1][1]]))
        steps([0, 1], 100, 3)
        check([2], lean.add([seqs[2][0]], [seqs[2][1]]))  # 320 tokens: the rows shift right, the cache grows
        lean.keep([1, 2])  # row 0 leaves
        check([3], lean.add([seqs[3][0]], [seqs[3][1]]))  # a short prompt joins a long batch
        steps([1, 2, 3], 200, 3)
        lean.keep([0, 2])  # the long one leaves: the columns that are padding in every row left are cut
        assert lean.t < len(seqs[2][0]) - 100
        steps([1, 3], 300, 1)


def test_prefix_cache_reuses_shared_prompt_blocks_and_changes_no_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Prompts that begin with the same 40 tokens (a system prompt): the second and later reuse the cached
    blocks (per adapter, never another adapter's) and their logits, and those of the steps after, still equal
    transformers + peft on each sequence alone. A reloaded adapter's blocks are dropped."""
    import torch
    from peft import PeftModel

    from tunelab.models.loading import load_model
    from tunelab.serve.lean import BLOCK, LeanModel

    a = _lora_adapter(tiny_model_dir, tmp_path / "a", 1, ["q_proj", "k_proj", "v_proj", "o_proj"])
    ref = PeftModel.from_pretrained(load_model(tiny_model_dir), a, adapter_name="a")
    ref.eval()
    lean = LeanModel(load_model(tiny_model_dir), max_rows=4)
    lean.load_adapter(a, "a")

    def alone(ids: list[int], adapter: str | None) -> torch.Tensor:
        with torch.inference_mode():
            if adapter is None:
                with ref.disable_adapter():
                    return ref(input_ids=torch.tensor([ids])).logits[0, -1]
            return ref(input_ids=torch.tensor([ids])).logits[0, -1]

    system = list(range(100, 140))  # 40 tokens: two whole blocks
    seqs = [[*system, 7, 8, 9], [*system, 11, 12], system + list(range(50, 70)), [*system[:20], 3, 4], [*system, 5]]
    adapters: list[str | None] = [None, None, "a", None, "a"]
    with torch.inference_mode():
        got = lean.add([seqs[0]], [None])
        torch.testing.assert_close(got[0], alone(seqs[0], None), atol=1e-4, rtol=1e-4)
        assert lean.prefixes.hits == 0 and len(lean.prefixes.blocks) == 2
        toks = [[]]  # type: ignore[var-annotated]
        for t in range(3):  # row 0 decodes, then rows join it: shared blocks copied in, the rest computed
            toks[0].append(200 + t)
            lean.step([toks[0][-1]], [None])
        got = lean.add([seqs[1], seqs[2], seqs[3]], adapters[1:4])
        assert lean.prefixes.hits == 2 + 1  # seqs[1]: both blocks; seqs[2] ("a"): none; seqs[3]: the first
        for i, g in zip((1, 2, 3), got, strict=True):
            torch.testing.assert_close(g, alone(seqs[i], adapters[i]), atol=1e-4, rtol=1e-4)
        rows = [seqs[0] + toks[0], seqs[1], seqs[2], seqs[3]]
        for t in range(3):
            nxt = [300 + t + r for r in range(4)]
            got = lean.step(nxt, [None, *adapters[1:4]])
            for r in range(4):
                rows[r] = [*rows[r], nxt[r]]
                torch.testing.assert_close(got[r], alone(rows[r], ([None, *adapters[1:4]])[r]), atol=1e-4, rtol=1e-4)
        lean.keep([0])
        hits = lean.prefixes.hits
        got = lean.add([seqs[4]], ["a"])  # "a" has seqs[2]'s blocks now
        assert lean.prefixes.hits == hits + 2
        torch.testing.assert_close(got[0], alone(seqs[4], "a"), atol=1e-4, rtol=1e-4)
        lean.load_adapter(a, "a")
        assert all(k[0] != "a" for k in lean.prefixes.blocks) and BLOCK == 16


def _runs(quantize: str | None) -> bool:
    """Whether this machine's PyTorch has kernels for the weight format (bf16: oneDNN on AVX-512; fbgemm: x86)."""
    import torch

    from tunelab.hardware import fbgemm

    if quantize == "bf16":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return quantize is None or fbgemm()


WEIGHTS = [pytest.param(q, marks=pytest.mark.skipif(not _runs(q), reason=f"no {q} kernels here")) for q in
           (None, "int8", "bf16", "fp16")]  # fmt: skip


@pytest.mark.parametrize("quantize", WEIGHTS)
def test_scripted_layer_loop_equals_the_python_one(tiny_model_dir: Path, quantize: str | None) -> None:
    """Calls without adapters run the layer loop as TorchScript: the same logits and cache as the Python loop
    (prefill with padding, steps, a row leaving), and in fp32 the same logits as transformers."""
    import torch

    from tunelab.models.loading import load_model
    from tunelab.serve.lean import LeanModel

    model = load_model(tiny_model_dir).eval()
    runs = {}
    for scripted in (True, False):
        lean = LeanModel(model, max_rows=3, quantize=quantize)
        lean.scripted = scripted
        out = []
        with torch.inference_mode():
            out.append(lean.add([list(range(5, 30)), [7, 8, 9]], [None, None]))
            for t in range(3):
                out.append(lean.step([40 + t, 50 + t], [None, None]))
            lean.keep([1])
            out.append(lean.step([60], [None]))
        runs[scripted] = (out, [k.clone() for k in lean.k])
    for a, b in zip(runs[True][0], runs[False][0], strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(runs[True][1], runs[False][1], strict=True))
    if quantize is None:
        with torch.inference_mode():
            ref = model(input_ids=torch.tensor([[7, 8, 9, 50, 51, 52, 60]])).logits[0, -1]
        torch.testing.assert_close(runs[True][0][-1][0], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("quantize", "bound"),
    [pytest.param(q, b, marks=pytest.mark.skipif(not _runs(q), reason=f"no {q} kernels here"))
     for q, b in (("int8", 0.2), ("bf16", 0.08), ("fp16", 0.01))],
)  # fmt: skip
def test_quantized_weights_stay_close_to_fp32(
    tiny_model_dir: Path, tmp_path: Path, quantize: str, bound: float
) -> None:
    """int8 / bf16 weights: logits different from fp32's (not exact) but close, with and without an adapter in
    the batch (its low-rank product stays fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelab.models.loading import load_model
    from tunelab.serve.lean import LeanModel

    adapter = tmp_path / "adapter"
    torch.manual_seed(0)
    get_peft_model(
        load_model(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    ).save_pretrained(adapter)
    fp = LeanModel(load_model(tiny_model_dir), max_rows=2)
    q = LeanModel(load_model(tiny_model_dir), max_rows=2, quantize=quantize)
    assert getattr(q.layers[0]["qkv"], quantize) and not getattr(fp.layers[0]["qkv"], quantize)
    for m in (fp, q):
        m.load_adapter(adapter, "a")
    prompts = [list(range(5, 30)), list(range(40, 52))]
    names: list[str | None] = [None, "a"]
    with torch.inference_mode():
        x, y = fp.add(prompts, names), q.add(prompts, names)
        assert not torch.allclose(x[0], x[1], atol=1e-3)  # the adapter row is another model
        for _ in range(4):
            for row in range(2):
                rel = float((x[row] - y[row]).norm() / x[row].norm())
                assert 0 < rel < bound, (row, rel)
            toks = [int(t) for t in x.argmax(-1)]
            x, y = fp.step(toks, names), q.step(toks, names)


def test_runner_choice(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tunelab.models.loading import load_model
    from tunelab.serve.engine import HFRunner
    from tunelab.serve.lean import LeanModel, adapter_supported

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    assert isinstance(make_runner(gpt2), HFRunner)  # auto falls back for models the lean decoder does not know
    with pytest.raises(ValueError, match="lean decoder cannot run"):
        make_runner(gpt2, kind="lean")
    with pytest.raises(ValueError, match="quantize"):
        make_runner(gpt2, quantize="int8")
    assert isinstance(make_runner(load_model(tiny_model_dir)), LeanModel)
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true}')
    assert adapter_supported(dora) == "use_dora is set"


@pytest.mark.parametrize(
    ("engine", "quantize", "has_bf16", "expect"),
    [
        ("auto", "auto", True, "bf16"),  # the default on a CPU with bf16 matrix units
        ("auto", "auto", False, "fp16"),  # fp16 elsewhere (fbgemm, x86)
        ("hf", "auto", True, "hf"),  # the transformers forward keeps the model's own weights
        ("auto", "none", True, None),
        ("auto", "int8", False, "int8"),
    ],
)
def test_serve_config_chooses_the_weights(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
    quantize: str,
    has_bf16: bool,
    expect: str | None,
) -> None:
    import torch

    import tunelab.hardware
    from tunelab.models.loading import load_model
    from tunelab.serve.config import ServeConfig
    from tunelab.serve.engine import HFRunner
    from tunelab.serve.host import Host

    monkeypatch.setattr(tunelab.hardware, "cpu_bf16", lambda: has_bf16)
    if expect == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 kernels on this CPU (no AVX-512): the lean decoder refuses bf16 weights")
    if expect == "fp16" and not tunelab.hardware.fbgemm():
        expect = None  # no fbgemm (not x86): fp32
    runner = Host._runner(load_model(tiny_model_dir), ServeConfig(engine=engine, quantize=quantize))  # type: ignore[arg-type]
    if expect == "hf":
        assert isinstance(runner, HFRunner) and (runner.decoder, runner.weights) == ("hf", "fp32")
        return
    assert (runner.decoder, runner.weights) == ("lean", expect or "fp32")
    head = runner.head
    assert (head.bf16, head.fp16, head.int8) == (expect == "bf16", expect == "fp16", expect == "int8")


def test_weights_without_kernels_are_a_config_error(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunelab.serve.lean
    from tunelab.errors import ConfigError
    from tunelab.models.loading import load_model
    from tunelab.serve.config import ServeConfig
    from tunelab.serve.host import Host

    monkeypatch.setattr(tunelab.serve.lean, "fbgemm", lambda: False)  # e.g. an ARM CPU
    with pytest.raises(ConfigError, match="fbgemm") as e:
        Host._runner(load_model(tiny_model_dir), ServeConfig(quantize="fp16"))
    assert e.value.field == "quantize"


def test_mailbox_delivers_every_token_in_order_with_few_wakeups() -> None:
    """Tokens posted from another thread reach their queues in order, all of them, and posts made while a
    drain is pending share its wake-up."""
    import asyncio
    import threading

    from tunelab.serve.streaming import Mailbox

    async def main() -> tuple[list[list[int]], int]:
        loop = asyncio.get_running_loop()
        box = Mailbox.of(loop)
        assert Mailbox.of(loop) is box
        queues: list[asyncio.Queue[int]] = [asyncio.Queue() for _ in range(3)]
        wakeups = 0
        real = loop.call_soon_threadsafe

        def counting(*a: object) -> object:
            nonlocal wakeups
            wakeups += 1
            return real(*a)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

        def engine() -> None:
            for step in range(200):
                for q in queues:
                    box.post(q, step)

        t = threading.Thread(target=engine)
        t.start()
        got: list[list[int]] = [[] for _ in queues]
        for i, q in enumerate(queues):
            while len(got[i]) < 200:
                got[i].append(await asyncio.wait_for(q.get(), 10))
        t.join()
        return got, wakeups

    got, wakeups = asyncio.run(main())
    assert got == [list(range(200))] * 3
    assert 1 <= wakeups < 600  # one per post would be 600


def test_transformers_runner_serves_adapters_whose_names_are_in_the_models_keys(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Adapters called "a" and "b" ("b" is in "base_model"): peft 0.22 counted every other key holding the name as
    the adapter's missing keys and warned (an error here); the runner gives peft names that hold no key part.
    Each row still runs its own adapter, and a deleted one frees its name."""
    import torch

    from tunelab.models.loading import load_model
    from tunelab.serve.engine import HFRunner

    a = _lora_adapter(tiny_model_dir, tmp_path / "a", 1, ["q_proj", "v_proj"])
    b = _lora_adapter(tiny_model_dir, tmp_path / "b", 2, ["up_proj", "down_proj"])
    runner = HFRunner(load_model(tiny_model_dir))
    runner.load_adapter(a, "a")
    runner.load_adapter(b, "b")
    prompt = list(range(5, 20))
    with torch.inference_mode():
        out = runner.add([prompt] * 3, [None, "a", "b"])
    assert not torch.allclose(out[0], out[1], atol=1e-4) and not torch.allclose(out[1], out[2], atol=1e-4)
    runner.delete_adapter("a")
    runner.load_adapter(a, "c")  # a new name: not the deleted one's number, nor "b"'s
    assert len(set(runner.names.values())) == 2
    with torch.inference_mode():
        runner.reset()
        again = runner.add([prompt] * 2, ["c", "b"])
    torch.testing.assert_close(again, out[1:], rtol=1e-4, atol=1e-4)
    for name in ("b", "c"):
        runner.delete_adapter(name)
    with torch.inference_mode():
        runner.reset()
        torch.testing.assert_close(runner.add([prompt], [None]), out[:1], rtol=1e-4, atol=1e-4)
