"""Continuous batching: requests that join a running batch get exactly the tokens they would get alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tunelab.serve.engine import Engine, GenRequest


def _alone(model, prompt: list[int], n: int) -> list[int]:  # type: ignore[no-untyped-def]
    from tunelab.evaluate.scoring import prefill_score_decode

    _, gen = prefill_score_decode(model, [prompt], max_new_tokens=n, eos_ids=())
    assert gen is not None
    return gen[0]


def test_joining_mid_batch_and_cancelling_change_no_ones_tokens(tiny_model_dir: Path) -> None:
    from tunelab.models.loading import load_model

    model = load_model(tiny_model_dir)
    eng = Engine(model, max_batch=4)
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
        while len(out[0]) < 3:  # the others join a batch that is already decoding
            time.sleep(0.001)
        eng.submit(reqs[1])
        eng.submit(reqs[2])
        while len(out[2]) < 2:
            time.sleep(0.001)
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
