"""Shared-context scoring equals scoring each full sequence on its own (no padding, no cache)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from tunelab.evaluate.scoring import score_continuations, sequence_nll


def _naive(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:  # type: ignore[no-untyped-def]
    import torch

    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    pred = logp[len(ctx) - 1 : len(ctx) + len(cont) - 1]
    tgt = torch.tensor(cont)
    return float(pred.gather(-1, tgt[:, None]).sum()), bool((pred.argmax(-1) == tgt).all())


@pytest.mark.parametrize(("batch_size", "max_rows"), [(1, 64), (3, 4), (8, 64)])
def test_shared_context_scores_equal_full_sequences(tiny_model_dir: Path, batch_size: int, max_rows: int) -> None:
    from tunelab.models.loading import load_model

    model = load_model(tiny_model_dir)
    rng = random.Random(0)
    contexts = [[rng.randrange(3, 300) for _ in range(rng.randint(1, 40))] for _ in range(7)]
    conts = [
        [[rng.randrange(3, 300) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(2, 5))] for _ in contexts
    ]
    got = score_continuations(model, contexts, conts, batch_size=batch_size, max_rows=max_rows)
    for i, ctx in enumerate(contexts):
        assert len(got[i]) == len(conts[i])
        for j, cont in enumerate(conts[i]):
            lp, greedy = _naive(model, ctx, cont)
            assert got[i][j].logprob == pytest.approx(lp, abs=1e-4)
            assert got[i][j].tokens == len(cont)
            assert got[i][j].greedy == greedy


def test_greedy_flag_is_true_for_the_models_own_continuation(tiny_model_dir: Path) -> None:
    import torch

    from tunelab.models.loading import load_model

    model = load_model(tiny_model_dir)
    ctx = [5, 17, 42, 8]
    with torch.inference_mode():
        gen = model.generate(torch.tensor([ctx]), max_new_tokens=4, do_sample=False, min_new_tokens=4)
    cont = gen[0, len(ctx) :].tolist()
    other = [(cont[0] + 1) % 300 + 3, *cont[1:]]
    got = score_continuations(model, [ctx], [[cont, other]])
    assert got[0][0].greedy and not got[0][1].greedy
    assert got[0][0].logprob > got[0][1].logprob


def test_sequence_nll_matches_the_models_own_loss(tiny_model_dir: Path) -> None:
    import torch

    from tunelab.models.loading import load_model

    model = load_model(tiny_model_dir)
    ids = list(range(3, 60))
    ((nll, n),) = sequence_nll(model, [ids], chunk=7)
    with torch.inference_mode():
        loss = float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)
    assert n == len(ids) - 1
    assert math.isclose(nll / n, loss, rel_tol=1e-5)


def test_lean_greedy_decoding_equals_transformers_generate(tiny_model_dir: Path) -> None:
    import torch

    from tunelab.evaluate.generation import eos_ids, generate_and_score
    from tunelab.evaluate.scoring import prefill_score_decode
    from tunelab.models.loading import load_model, load_tokenizer

    model, tok = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    rng = random.Random(1)
    prompts = [[rng.randrange(3, 300) for _ in range(rng.randint(2, 30))] for _ in range(6)]
    _, gen = prefill_score_decode(model, prompts, max_new_tokens=12, eos_ids=eos_ids(model, tok), batch_size=4)
    assert gen is not None
    for p, g in zip(prompts, gen, strict=True):
        with torch.inference_mode():
            ref = model.generate(
                torch.tensor([p]),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )[0, len(p) :].tolist()
        assert g == ref[: len(g)] and (len(g) == len(ref) or g[-1] == tok.eos_token_id)
    # scoring from the same prefill, with the cache then reused for decoding, changes neither result
    conts = [[[5, 6], [7], [8, 9, 10]] for _ in prompts]
    texts, scores = generate_and_score(model, tok, prompts, conts, max_new_tokens=12, batch_size=4)
    alone = score_continuations(model, prompts, conts, batch_size=4)
    assert scores is not None
    for a, b in zip(scores, alone, strict=True):
        assert [x.logprob for x in a] == pytest.approx([x.logprob for x in b], abs=1e-5)
    plain, _ = generate_and_score(model, tok, prompts, None, max_new_tokens=12, batch_size=4)
    assert texts == plain
