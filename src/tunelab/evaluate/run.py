"""Score one model on one eval set: per-example predictions and scores, the metrics, and the latency.

`evaluate_items` is what `tunelab eval`, the quickstart and the jobs call; it takes a loaded model so a
run that already holds one (the quickstart, after training) does not load it again. Everything it
returns is a pure function of (model, items, params): greedy decoding, items in file order, timings kept
apart (`timings`) so that two runs give byte-identical predictions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tunelab.errors import DataError, ModelError
from tunelab.evaluate.generation import generate_and_score, generate_greedy
from tunelab.evaluate.items import EvalItem, EvalSet
from tunelab.evaluate.latency import Timing, latency_summary, time_request
from tunelab.evaluate.metrics import UNPARSED, classification_metrics, parse_label
from tunelab.evaluate.sandbox import program_for, run_program
from tunelab.evaluate.scoring import perplexity, score_continuations, sequence_nll
from tunelab.evaluate.text_metrics import reference_scores, support
from tunelab.models.chat import encode_prompt, render
from tunelab.progress import Reporter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MAX_LABELS = 50
CODE_INSTRUCTION = (
    "Complete the following Python code. Reply with the complete function in one ```python block, "
    "without tests or explanations.\n\n"
)
DEFAULT_NEW_TOKENS = {"classification": 16, "generation": 128, "code": 256, "multiple_choice": 16, "perplexity": 16}


@dataclass
class EvalParams:
    batch_size: int = 8
    max_new_tokens: int | None = None  # None: by kind (DEFAULT_NEW_TOKENS)
    latency_samples: int = 8
    seed: int = 0
    limit: int | None = None
    code_timeout_s: float = 10.0
    aliases: dict[str, str] = field(default_factory=dict)  # classification: other words for a label
    judge: tuple[Any, Any] | None = None  # (model, tokenizer) of a local judge for faithfulness

    def new_tokens(self, kind: str) -> int:
        return self.max_new_tokens or DEFAULT_NEW_TOKENS[kind]


@dataclass
class EvalResult:
    kind: str
    rows: list[dict[str, Any]]  # one per item, in item order: id, input, reference, output, scores, ...
    metrics: dict[str, Any]  # headline numbers: accuracy, rouge_l, perplexity, pass@1, ...
    latency: dict[str, Any]
    timings: list[dict[str, Any]]  # per-request latency (kept out of rows: timings differ run to run)
    eval_s: float
    warnings: list[str] = field(default_factory=list)

    def scores(self, metric: str) -> list[float]:
        return [float(r["scores"][metric]) for r in self.rows]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def chat_messages(item: EvalItem, system: str | None) -> list[dict[str, str]]:
    msgs = list(item.messages)
    if system and not (msgs and msgs[0]["role"] == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def mc_context(item: EvalItem) -> str:
    """The multiple-choice prompt as lm-eval's usual template writes it; each choice follows after a space."""
    q = item.text or ""
    return f"{item.context}\n\n{q}\nAnswer:" if item.context else f"{q}\nAnswer:"


def split_context(
    tok: PreTrainedTokenizerBase, context: str, continuation: str, *, move_space: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, the continuation's taken from encoding the whole text (as
    lm-eval does), so a token that spans the seam is scored as the model would see it. `move_space`: a
    trailing space of the context belongs to the continuation (" Paris", not "Answer: " + "Paris"); off for
    chat prompts, whose generation prompt ends exactly where the reply starts."""
    n_space = len(context) - len(context.rstrip()) if move_space else 0
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = list(tok(context + continuation, add_special_tokens=False)["input_ids"])
    ctx = list(tok(context, add_special_tokens=False)["input_ids"])
    if whole[: len(ctx)] != ctx:  # the seam merged two tokens: score the continuation on its own
        return ctx, list(tok(continuation, add_special_tokens=False)["input_ids"])
    return ctx, whole[len(ctx) :]


def chat_choices(
    tok: PreTrainedTokenizerBase, messages: list[dict[str, str]], answers: Sequence[str]
) -> tuple[list[int], list[list[int]]]:
    """The generation prompt's ids and, per answer, the ids of that answer as the whole assistant turn
    (through its end-of-turn), as the chat template renders it."""
    head = render(tok, messages, generation_prompt=True)
    pairs = [
        split_context(
            tok,
            head,
            render(tok, [*messages, {"role": "assistant", "content": a}], generation_prompt=False)[len(head) :],
            move_space=False,
        )
        for a in answers
    ]
    return pairs[0][0], [c for _, c in pairs]


def evaluate_items(
    model: Any,
    tok: PreTrainedTokenizerBase,
    evset: EvalSet,
    params: EvalParams,
    reporter: Reporter,
    name: str = "model",
) -> EvalResult:
    import torch

    items = evset.items[: params.limit] if params.limit else evset.items
    if not items:
        raise DataError("no eval items", field="data")
    torch.manual_seed(params.seed)
    t0 = time.perf_counter()
    kind = evset.kind
    runner: dict[str, Callable[..., tuple[list[dict[str, Any]], dict[str, Any], list[str]]]] = {
        "classification": _classification,
        "generation": _generation,
        "multiple_choice": _multiple_choice,
        "perplexity": _perplexity,
        "code": _code,
    }
    if kind not in runner:
        raise DataError(f"unknown eval kind {kind!r}", field="kind")
    n_lat = min(params.latency_samples, len(items))
    with reporter.progress(f"eval {name}", len(items) + n_lat) as update:
        timings = _latency(model, tok, items[:n_lat], evset, params, update)
        rows, metrics, warnings = runner[kind](model, tok, items, evset, params, update)
    eval_s = time.perf_counter() - t0
    metrics = {"n": len(rows), **metrics}
    timing_rows = [
        {"id": it.id, "ttft_s": t.ttft_s, "request_s": t.total_s, "new_tokens": t.new_tokens}
        for it, t in zip(items, timings, strict=False)
    ]
    return EvalResult(kind, rows, metrics, latency_summary(timings), timing_rows, eval_s, warnings)


def _prompt_ids(tok: PreTrainedTokenizerBase, item: EvalItem, evset: EvalSet) -> list[int]:
    if item.kind in ("classification", "generation"):
        return encode_prompt(tok, chat_messages(item, evset.system_prompt))
    if item.kind == "code":
        return encode_prompt(tok, [{"role": "user", "content": CODE_INSTRUCTION + (item.text or "")}])
    if item.kind == "multiple_choice":
        return list(tok(mc_context(item), add_special_tokens=False)["input_ids"])
    return list(tok(item.text or "", add_special_tokens=False)["input_ids"])


def _latency(
    model: Any, tok: PreTrainedTokenizerBase, items: list[EvalItem], evset: EvalSet, params: EvalParams, update: Any
) -> list[Timing]:
    eos = [int(tok.eos_token_id)] if tok.eos_token_id is not None else []
    out = []
    for it in items:
        ids = _prompt_ids(tok, it, evset)
        if ids:
            out.append(time_request(model, ids, max_new_tokens=min(params.new_tokens(it.kind), 64), eos=eos))
        update()
    return out


def _generate(
    model: Any, tok: PreTrainedTokenizerBase, prompts: list[list[int]], params: EvalParams, kind: str, update: Any
) -> list[str]:
    return generate_greedy(
        model, tok, prompts, max_new_tokens=params.new_tokens(kind), batch_size=params.batch_size, on_batch=update
    )


def _check_outputs(outputs: list[str], n: int) -> list[str]:
    empty = sum(1 for o in outputs if not o.strip())
    if empty == n:
        raise ModelError(
            f"the model produced no text for any of the {n} items (it ends its turn at once); "
            "check the chat template and the model, or score with --kind multiple_choice",
            field="output",
        )
    return [f"{empty} of {n} answers are empty (scored as wrong)"] if empty else []


def _classification(
    model: Any, tok: PreTrainedTokenizerBase, items: list[EvalItem], evset: EvalSet, params: EvalParams, update: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    labels = list(evset.labels) or sorted({it.reference or "" for it in items})
    if len(labels) > MAX_LABELS:
        raise DataError(
            f"{len(labels)} distinct answers: too many for a label set (at most {MAX_LABELS}); "
            "use --kind generation, or give --labels",
            file=items[0].file,
            field="label",
        )
    unknown = [it for it in items if it.reference not in labels]
    if unknown:
        it = unknown[0]
        raise DataError(
            f"label {it.reference!r} is not in the label set {labels}", file=it.file, line=it.line, field="label"
        )
    msgs = [chat_messages(it, evset.system_prompt) for it in items]
    # one prompt pass per item serves both answers: the label with the highest log-likelihood as the whole
    # assistant turn (constrained) and the free greedy reply (what a user would get)
    prompts, conts = [], []
    for m in msgs:
        ctx, label_ids = chat_choices(tok, m, labels)
        prompts.append(ctx)
        conts.append(label_ids)
    outputs, maybe_scored = generate_and_score(
        model,
        tok,
        prompts,
        conts,
        max_new_tokens=params.new_tokens("classification"),
        batch_size=params.batch_size,
        on_batch=update,
    )
    assert maybe_scored is not None
    scored = maybe_scored
    constrained = [labels[max(range(len(labels)), key=lambda j: s[j].logprob)] for s in scored]
    warnings = _check_outputs(outputs, len(items))
    parsed = [parse_label(o, labels, params.aliases) for o in outputs]
    gold = [it.reference or "" for it in items]
    gen_m = classification_metrics(gold, parsed, labels)
    con_m = classification_metrics(gold, list(constrained), labels)
    rows: list[dict[str, Any]] = []
    for it, o, p, c, sc in zip(items, outputs, parsed, constrained, scored, strict=True):
        rows.append(
            {
                "id": it.id,
                "input": it.input,
                "reference": it.reference,
                "output": o,
                "predicted": p if p is not None else UNPARSED,
                "predicted_constrained": c,
                "label_logprobs": {lab: round(x.logprob, 4) for lab, x in zip(labels, sc, strict=True)},
                "scores": {"accuracy": float(p == it.reference), "accuracy_constrained": float(c == it.reference)},
            }
        )
    metrics = {
        "accuracy": gen_m.accuracy,
        "macro_f1": gen_m.macro_f1,
        "unparsed": gen_m.unparsed,
        "accuracy_constrained": con_m.accuracy,
        "macro_f1_constrained": con_m.macro_f1,
        "labels": labels,
        "per_class": gen_m.per_class,
        "confusion": gen_m.confusion,
    }
    return rows, metrics, warnings


def _generation(
    model: Any, tok: PreTrainedTokenizerBase, items: list[EvalItem], evset: EvalSet, params: EvalParams, update: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    prompts = [encode_prompt(tok, chat_messages(it, evset.system_prompt)) for it in items]
    outputs = _generate(model, tok, prompts, params, "generation", update)
    warnings = _check_outputs(outputs, len(items))
    rows: list[dict[str, Any]] = []
    for it, o in zip(items, outputs, strict=True):
        scores = reference_scores(o, it.reference or "")
        if it.context:
            scores["faithfulness.support"] = support(o, it.context)
        rows.append({"id": it.id, "input": it.input, "reference": it.reference, "output": o, "scores": scores})
    if params.judge is not None:
        from tunelab.evaluate.judge import judge_support

        with_ctx = [(k, it) for k, it in enumerate(items) if it.context]
        verdicts = judge_support(
            params.judge[0],
            params.judge[1],
            [(outputs[k], it.context or "") for k, it in with_ctx],
            batch_size=params.batch_size,
        )
        for (k, _), v in zip(with_ctx, verdicts, strict=True):
            rows[k]["scores"]["faithfulness.judge"] = v["support"]
            rows[k]["judge"] = v["claims"]
    names = sorted({k for r in rows for k in r["scores"]})
    metrics: dict[str, Any] = {}
    for k in names:
        vals = [r["scores"][k] for r in rows if k in r["scores"]]
        metrics[k] = _mean(vals)
    return rows, metrics, warnings


def _multiple_choice(
    model: Any, tok: PreTrainedTokenizerBase, items: list[EvalItem], evset: EvalSet, params: EvalParams, update: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    contexts, conts = [], []
    for it in items:
        ctx = mc_context(it)
        pairs = [split_context(tok, ctx, " " + c) for c in it.choices]
        contexts.append(pairs[0][0])
        conts.append([c for _, c in pairs])
    scored = score_continuations(model, contexts, conts, batch_size=params.batch_size, on_batch=update)
    rows: list[dict[str, Any]] = []
    for it, s in zip(items, scored, strict=True):
        lps = [x.logprob for x in s]
        norm = [x.logprob / max(1, len(c)) for x, c in zip(s, it.choices, strict=True)]  # per character
        pred = max(range(len(lps)), key=lambda j: lps[j])
        pred_n = max(range(len(norm)), key=lambda j: norm[j])
        rows.append(
            {
                "id": it.id,
                "input": it.input,
                "reference": it.gold,
                "output": it.choices[pred],
                "predicted": pred,
                "choice_logprobs": [round(x, 4) for x in lps],
                "scores": {"accuracy": float(pred == it.answer), "accuracy_norm": float(pred_n == it.answer)},
            }
        )
    metrics = {k: _mean([r["scores"][k] for r in rows]) for k in ("accuracy", "accuracy_norm")}
    return rows, metrics, []


def _perplexity(
    model: Any, tok: PreTrainedTokenizerBase, items: list[EvalItem], evset: EvalSet, params: EvalParams, update: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    rows: list[dict[str, Any]] = []
    tot_nll, tot_tok, tot_bytes = 0.0, 0, 0
    for it in items:
        text = it.text or ""
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
            ids = [int(tok.bos_token_id), *ids]
        if len(ids) < 2:
            raise DataError("text too short to score (needs two tokens)", file=it.file, line=it.line, field="text")
        ((nll, n),) = sequence_nll(model, [ids])
        nbytes = len(text.encode("utf-8"))
        tot_nll, tot_tok, tot_bytes = tot_nll + nll, tot_tok + n, tot_bytes + nbytes
        rows.append(
            {
                "id": it.id,
                "input": text[:200],
                "reference": None,
                "output": None,
                "tokens": n,
                "scores": {"nll_per_token": nll / n, "bits_per_byte": nll / max(1, nbytes) / 0.6931471805599453},
            }
        )
        update()
    metrics = {
        "perplexity": perplexity(tot_nll, tot_tok),
        "nll_per_token": tot_nll / tot_tok,
        "bits_per_byte": tot_nll / max(1, tot_bytes) / 0.6931471805599453,
        "tokens": tot_tok,
    }
    return rows, metrics, []


def _code(
    model: Any, tok: PreTrainedTokenizerBase, items: list[EvalItem], evset: EvalSet, params: EvalParams, update: Any
) -> tuple[list[dict[str, Any]], dict[str, Any], list[str]]:
    prompts = [_prompt_ids(tok, it, evset) for it in items]
    outputs = _generate(model, tok, prompts, params, "code", update)
    warnings = _check_outputs(outputs, len(items))
    rows: list[dict[str, Any]] = []
    for it, o in zip(items, outputs, strict=True):
        res = run_program(program_for(it.text or "", o, it.tests or ""), timeout_s=params.code_timeout_s)
        rows.append(
            {
                "id": it.id,
                "input": it.text,
                "reference": it.reference,
                "output": o,
                "status": res.status,
                "detail": res.detail[-300:],
                "scores": {"pass@1": float(res.passed)},
            }
        )
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return rows, {"pass@1": _mean([r["scores"]["pass@1"] for r in rows]), "status": statuses}, warnings
