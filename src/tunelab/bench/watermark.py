"""`tunelab bench watermark`: the serving watermark on the default model, through tunelab's own engine.

Prompts: the opening words of BBC articles, "continue this news story"; replies of `tokens` tokens (end of
sequence held off until then) sampled at temperature 0.7 (seeded), with and without the watermark, in batches as
the server runs them. Figures, at the serving default gamma and delta, and per delta in `by_delta`:

- `tpr_at_fpr1`: marked replies detected at p < 0.01 (one-sided; the null is exact, so this is FPR 1%);
- `fpr_human`: BBC articles (never generated) called marked at the same threshold; `fpr_unmarked` the same on
  the model's own unmarked replies;
- `ppl_increase`: relative increase of the base model's perplexity of the marked replies over the unmarked
  ones (the quality cost, measured by the unmarked model);
- `tpr_after_paraphrase`: marked replies with 25% of their words replaced by random words of the BBC corpus;
- `tpr_after_finetune`: a LoRA trained on the marked replies (as chat answers to their prompts), sampled
  *without* the watermark on new prompts: does the mark carry over ("was my model's output used to train
  yours?"); with `z_mean_after_finetune` beside the unmarked replies' mean z.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json
from tunelab.govern.watermark import Watermark

GOALS = {"tpr_at_fpr1": (">=", 0.95), "fpr_human": ("<=", 0.01), "ppl_increase": ("<=", 0.10)}
ALPHA = 0.01


def _articles(n: int, seed: int) -> list[str]:
    from tunelab.data.tasks import _bbc_root, _read_article

    paths = sorted(_bbc_root().rglob("*.txt"))
    random.Random(seed).shuffle(paths)
    return [_read_article(p) for p in paths[:n]]


def _generate(host: Any, prompts: list[list[int]], tokens: int, wm: Watermark | None, adapter: str | None,
              seed: int) -> list[list[int]]:  # fmt: skip
    """Each prompt's reply of exactly `tokens` tokens (end of sequence held off until then), sampled at 0.7."""
    from tunelab.serve.engine import GenRequest, QueueFull

    outs: list[list[int]] = [[] for _ in prompts]
    done = threading.Semaphore(0)

    def on(i: int) -> Callable[[int | None, str | None], None]:
        def cb(tok: int | None, reason: str | None) -> None:
            if tok is not None:
                outs[i].append(tok)
            if reason is not None:
                done.release()

        return cb

    for i, p in enumerate(prompts):
        while True:
            try:
                host.engine.submit(GenRequest(prompt=p, max_tokens=tokens, on_token=on(i), temperature=0.7,
                                              seed=seed + i, adapter=adapter, watermark=wm,
                                              min_tokens=tokens))  # fmt: skip
                break
            except QueueFull:  # wait for one to finish
                time.sleep(0.05)
    for _ in prompts:
        done.acquire()
    return outs


def _nll(model: Any, prompts: list[list[int]], gens: list[list[int]]) -> float:
    """Mean per-token negative log-likelihood of the generated tokens given their prompts."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for p, g in zip(prompts, gens, strict=True):
            if not g:
                continue
            ids = torch.tensor([p + g])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1 : -1].float(), -1)
            total -= float(logp.gather(1, torch.tensor(g).unsqueeze(1)).sum())
            count += len(g)
    return total / max(1, count)


def _substitute(text: str, words: list[str], rng: random.Random, share: float = 0.25) -> str:
    return re.sub(r"[A-Za-z]+", lambda m: rng.choice(words) if rng.random() < share else m.group(0), text)


def _zmean(rows: list[dict[str, Any]]) -> float:
    zs = [r["z"] for r in rows if r["z"] is not None]
    return sum(zs) / max(1, len(zs))


def _rate(zs: list[dict[str, Any]]) -> float:
    ok = [r for r in zs if r["p_value"] is not None]
    return sum(r["p_value"] < ALPHA for r in ok) / max(1, len(ok))


def bench_watermark(
    out: Path, *, prompts: int = 200, tokens: int = 200, finetune_prompts: int = 100, finetune_steps: int = 60,
    seed: int = 0, deltas: tuple[float, ...] = (1.0, 1.5, 2.0), log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """The figures at the serving default delta (`WatermarkConfig.delta`), and `by_delta` for each of `deltas`
    (the marked replies made again with each: the trade of detection against quality)."""
    import math

    from tunelab.config import build_config
    from tunelab.models.chat import encode_chat, encode_prompt
    from tunelab.progress import Reporter
    from tunelab.serve.config import ServeConfig, WatermarkConfig
    from tunelab.serve.host import Host
    from tunelab.train.engine import save_model, train

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    texts = _articles(2 * prompts + finetune_prompts, seed)
    starts = [" ".join(t.split()[:24]) for t in texts[: prompts + finetune_prompts]]
    human = texts[prompts + finetune_prompts :]
    users = [f"Continue this news story in your own words: {s}" for s in starts]
    host = Host(ServeConfig(max_batch=16, max_queue=512))
    tok, vocab = host.tok, len(host.tok)
    default = WatermarkConfig()
    key = f"tunelab-bench-{seed}".encode() * 2
    wm = Watermark(key, gamma=default.gamma, delta=default.delta)
    deltas = tuple(sorted({*deltas, default.delta}))
    enc = [encode_prompt(tok, [{"role": "user", "content": u}]) for u in users]
    host.engine.start()
    try:
        t = time.perf_counter()
        plain = _generate(host, enc[:prompts], tokens, None, None, seed)
        gen_s = time.perf_counter() - t
        log(f"{prompts} unmarked replies in {gen_s:.0f} s")
        by_delta_ids = {}
        for d in deltas:
            by_delta_ids[d] = _generate(host, enc[:prompts], tokens, Watermark(key, default.gamma, d), None, seed)
            log(f"{prompts} marked replies, delta {d}")
        marked = by_delta_ids[default.delta]

        def score(ids: list[list[int]]) -> list[dict[str, Any]]:
            return [wm.score(x, vocab) for x in ids]

        z_plain = score(plain)
        z_human = score([tok(h, add_special_tokens=False)["input_ids"][:tokens] for h in human])
        words = sorted({w for h in human for w in re.findall(r"[A-Za-z]+", h)})
        from tunelab.models.loading import load_model

        base = load_model(host.resolved.path)  # the unmarked model judges both sides' perplexity
        base.eval()
        nll_p = _nll(base, enc[:prompts], plain)
        by_delta, nll_of, z_of, para_of = {}, {}, {}, {}
        for d, ids in by_delta_ids.items():  # each delta's replies scored, attacked and judged once
            nll_of[d], z_of[d] = _nll(base, enc[:prompts], ids), score(ids)
            rng = random.Random(seed)
            para_of[d] = score([tok(_substitute(str(tok.decode(m)), words, rng), add_special_tokens=False)["input_ids"]
                                for m in ids])  # fmt: skip
            by_delta[str(d)] = {"tpr_at_fpr1": _rate(z_of[d]), "ppl_increase": math.exp(nll_of[d] - nll_p) - 1,
                                "tpr_after_paraphrase": _rate(para_of[d]), "z_mean": _zmean(z_of[d])}  # fmt: skip
        nll_m, z_marked, z_para = nll_of[default.delta], z_of[default.delta], para_of[default.delta]
        log("perplexity scored")

        # fine-tune on the marked replies, then sample without the mark
        cfg = build_config({"train": {"max_steps": finetune_steps}}, "bench-watermark")
        examples = [encode_chat(tok, [{"role": "user", "content": u},
                                      {"role": "assistant", "content": str(tok.decode(m, skip_special_tokens=True))}])
                    for u, m in zip(users[:prompts], marked, strict=True)]  # fmt: skip
        trained = train(base, examples, cfg, Reporter(quiet=True), pad_id=int(tok.pad_token_id or 0))
        save_model(trained.model, out / "finetuned-on-marked")
        log(f"LoRA trained on the marked replies: {finetune_steps} steps")
        host.register("ft", out / "finetuned-on-marked")
        host.ensure_adapter("ft")
        after = _generate(host, enc[prompts:], tokens, None, "ft", seed + 10_000)
        z_after = score(after)
    finally:
        host.engine.stop()

    r: dict[str, Any] = {
        "model": host.resolved.base_model_id, "prompts": prompts, "max_tokens": tokens, "gamma": wm.gamma,
        "delta": wm.delta, "temperature": 0.7, "alpha": ALPHA,
        "mean_tokens_marked": sum(len(m) for m in marked) / prompts,
        "tpr_at_fpr1": _rate(z_marked), "fpr_unmarked": _rate(z_plain), "fpr_human": _rate(z_human),
        "human_texts": len(z_human), "ppl_marked": math.exp(nll_m), "ppl_unmarked": math.exp(nll_p),
        "ppl_increase": math.exp(nll_m - nll_p) - 1, "tpr_after_paraphrase": _rate(z_para),
        "paraphrase": "25% of words replaced by random words of the BBC corpus",
        "tpr_after_finetune": _rate(z_after), "finetune_steps": finetune_steps,
        "finetune_prompts": finetune_prompts, "z_mean_marked": _zmean(z_marked), "z_mean_unmarked": _zmean(z_plain),
        "z_mean_after_finetune": _zmean(z_after), "z_mean_human": _zmean(z_human),
        "by_delta": by_delta, "engine": f"tunelab engine ({host.runner.decoder}, batch 16)", "generate_s": gen_s,
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip
    r["goals"] = {k: {"goal": f"{op} {v}", "met": (r[k] >= v) if op == ">=" else (r[k] <= v)}
                  for k, (op, v) in GOALS.items()}  # fmt: skip
    atomic_write_json(out / "bench-watermark.json", r)
    return r
