"""Classification by generation: prompt with the task, parse the label from the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.config import EvalSection
from tunelab.data.formats import Record
from tunelab.data.tasks import ClassificationTask
from tunelab.evaluate.generation import generate_greedy, time_single
from tunelab.evaluate.metrics import ClassMetrics, classification_metrics, parse_label, percentile
from tunelab.models.chat import encode_prompt
from tunelab.progress import Reporter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LABEL_ALIASES = {"bbc-topics": {"technology": "tech", "sports": "sport", "entertainments": "entertainment"}}


@dataclass
class EvalRun:
    name: str
    predictions: list[dict[str, Any]]
    metrics: ClassMetrics
    latency_s: list[float]
    eval_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "accuracy": self.metrics.accuracy,
            "macro_f1": self.metrics.macro_f1,
            "latency_p50_s": percentile(self.latency_s, 50),
            "latency_p95_s": percentile(self.latency_s, 95),
            "latency_samples": len(self.latency_s),
            "unparsed": self.metrics.unparsed,
            "n": self.metrics.n,
            "eval_s": self.eval_s,
            "examples_per_s": self.metrics.n / self.eval_s if self.eval_s else 0.0,
        }


def evaluate_classification(
    model: Any,  # a PreTrainedModel or a PeftModel around one
    tok: PreTrainedTokenizerBase,
    task: ClassificationTask,
    records: list[Record],
    cfg: EvalSection,
    reporter: Reporter,
    name: str,
) -> EvalRun:
    if cfg.limit:
        records = records[: cfg.limit]
    prompts = [encode_prompt(tok, r.messages) for r in records]
    t0 = time.perf_counter()
    latencies = []
    with reporter.progress(f"eval {name}", len(records) + min(cfg.latency_samples, len(records))) as update:
        for prompt in prompts[: cfg.latency_samples]:
            latencies.append(time_single(model, tok, prompt, cfg.max_new_tokens))
            update()
        outputs = generate_greedy(
            model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, on_batch=update
        )
    eval_s = time.perf_counter() - t0
    aliases = LABEL_ALIASES.get(task.name, {})
    preds = [parse_label(o, task.labels, aliases) for o in outputs]
    gold = [r.answer.strip() for r in records]
    metrics = classification_metrics(gold, preds, task.labels)
    rows = []
    for i, (r, o, p) in enumerate(zip(records, outputs, preds, strict=True)):
        rows.append(
            {
                "id": r.id,
                "input": r.input,
                "reference": gold[i],
                "output": o,
                "predicted": p,
                "correct": p == gold[i],
                "latency_s": latencies[i] if i < len(latencies) else None,
            }
        )
    return EvalRun(name, rows, metrics, latencies, eval_s)
