"""Classification of audited chat records (the quickstart's eval): the same code as `tunelab eval`.

`evaluate_classification` turns the audit's records into eval items and calls `evaluate_items`; the
`EvalRun` it returns keeps the shape the quickstart's summary, report and model card read, and holds the
full `EvalResult` for writing an eval directory that `tunelab compare` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.config import EvalSection
from tunelab.data.formats import Record
from tunelab.data.tasks import ClassificationTask
from tunelab.evaluate.items import EvalItem, EvalSet
from tunelab.evaluate.memorisation import MemorisationData
from tunelab.evaluate.metrics import ClassMetrics, classification_metrics, percentile
from tunelab.evaluate.probes import run_probes
from tunelab.evaluate.run import EvalParams, EvalResult, evaluate_items
from tunelab.progress import Reporter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LABEL_ALIASES = {"bbc-topics": {"technology": "tech", "sports": "sport", "entertainments": "entertainment"}}


@dataclass
class EvalRun:
    name: str
    predictions: list[dict[str, Any]]  # id, input, reference, output, predicted, correct, latency_s
    metrics: ClassMetrics
    latency_s: list[float]
    eval_s: float
    result: EvalResult
    evset: EvalSet
    params: EvalParams
    probes: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]

    def summary(self) -> dict[str, Any]:
        lat = self.result.latency
        return {
            "accuracy": self.metrics.accuracy,
            "macro_f1": self.metrics.macro_f1,
            "accuracy_constrained": self.result.metrics["accuracy_constrained"],
            "latency_p50_s": percentile(self.latency_s, 50),
            "latency_p95_s": percentile(self.latency_s, 95),
            "ttft_p50_s": lat.get("ttft_p50_s", 0.0),
            "latency_samples": len(self.latency_s),
            "unparsed": self.metrics.unparsed,
            "n": self.metrics.n,
            "eval_s": self.eval_s,
            "examples_per_s": self.metrics.n / self.eval_s if self.eval_s else 0.0,
        }


def eval_set_of(task: ClassificationTask, records: list[Record]) -> EvalSet:
    items = [
        EvalItem(
            id=r.id,
            kind="classification",
            file=r.file,
            line=r.line,
            messages=[dict(m) for m in r.messages[:-1]],
            reference=r.answer.strip(),
        )
        for r in records
    ]
    return EvalSet(task.name, "classification", items, [], task.labels)


def evaluate_classification(
    model: Any,  # a PreTrainedModel or a PeftModel around one
    tok: PreTrainedTokenizerBase,
    task: ClassificationTask,
    records: list[Record],
    cfg: EvalSection,
    reporter: Reporter,
    name: str,
    memo: MemorisationData | None = None,
) -> EvalRun:
    params = EvalParams(
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        latency_samples=cfg.latency_samples,
        seed=cfg.seed,
        limit=cfg.limit,
        aliases=LABEL_ALIASES.get(task.name, {}),
    )
    evset = eval_set_of(task, records)
    res = evaluate_items(model, tok, evset, params, reporter, name)
    probes = {}
    if cfg.probes:
        with reporter.status(f"probes ({name}): {', '.join(cfg.probes)}"):
            probes = run_probes(
                model,
                tok,
                cfg.probes,
                evset,
                batch=cfg.batch_size,
                robustness_limit=cfg.robustness_limit,
                seed=cfg.seed,
                memo=memo,
            )
    latency = [t["request_s"] for t in res.timings]
    rows = []
    for i, r in enumerate(res.rows):
        predicted = r["predicted"]
        rows.append(
            {
                "id": r["id"],
                "input": r["input"],
                "reference": r["reference"],
                "output": r["output"],
                "predicted": predicted,
                "correct": r["scores"]["accuracy"] == 1.0,
                "predicted_constrained": r["predicted_constrained"],
                "latency_s": latency[i] if i < len(latency) else None,
            }
        )
    gold = [r["reference"] for r in res.rows]
    preds = [r["predicted"] if r["predicted"] in task.labels else None for r in res.rows]
    metrics = classification_metrics(gold, preds, task.labels)
    return EvalRun(name, rows, metrics, latency, res.eval_s, res, evset, params, probes)
