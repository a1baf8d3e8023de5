"""`tunelab bench eval`: tunelab's multiple-choice scoring vs `lm-eval` on the same items, same model.

The items: `bbc-headlines` (200 BBC articles of ~120 words, five candidate headlines each, the four wrong
ones from the same topic), written as a local JSONL file. lm-eval reads it through a custom task YAML
(`dataset_path: json`), offline (`HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`), with the same prompt
(`{context}\\n\\n{question}\\nAnswer:` and each choice after a space), batch size 8, fp32 on the CPU.
Each side runs in its own process (wall time from start to exit, peak RSS its own). Agreement is checked
item by item, not only on the totals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json

TARGETS = {"agreement_abs_diff_max": 0.01, "speed_ratio_min": 3.0}
TASK_NAME = "tunelab_bbc_headlines"
_TASK_YAML = """\
# lm-eval custom task over a local JSONL file (written by `tunelab bench eval`)
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}\\n\\n{{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

# Each side is a fresh interpreter; this wrapper records its own peak RSS on the way out.
_WRAP = """
import json, resource, runpy, sys
out = sys.argv[1]
sys.argv = sys.argv[2:]
code = 0
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
finally:
    with open(out, "w") as f:
        json.dump({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}, f)
sys.exit(code)
"""


def _timed(cmd: list[str], rss_file: Path, env: dict[str, str], log: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", _WRAP, str(rss_file), *cmd], stdout=f, stderr=subprocess.STDOUT, env=env
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}):\n{tail}")
    rss: dict[str, Any] = json.loads(rss_file.read_text())
    return {"wall_s": wall, **rss}


def _lm_eval_samples(out: Path) -> dict[str, dict[str, float]]:
    files = sorted(out.rglob(f"samples_{TASK_NAME}_*.jsonl"))
    if not files:
        raise RuntimeError(f"lm-eval wrote no samples under {out}")
    rows: dict[str, dict[str, float]] = {}
    for line in files[-1].read_text().splitlines():
        s = json.loads(line)
        rows[str(s["doc"]["id"])] = {"acc": float(s["acc"]), "acc_norm": float(s["acc_norm"])}
    return rows


def bench_eval(
    out: Path, *, model: str | None = None, items: int = 200, batch_size: int = 8, log: Any = print
) -> dict[str, Any]:
    from tunelab.data.tasks import build_bbc_headlines
    from tunelab.models.loading import resolve_model

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model(model)
    data = build_bbc_headlines(out / "data", per_class=max(1, items // 5))
    n_items = len(data.read_text().splitlines())
    task_dir = out / "lm_eval_task"
    task_dir.mkdir(exist_ok=True)
    (task_dir / f"{TASK_NAME}.yaml").write_text(_TASK_YAML.format(name=TASK_NAME, data=json.dumps(str(data))))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(out / "hf-datasets-cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }

    log(f"tunelab: {n_items} items, model {resolved.path}")
    ours_dir = out / "tunelab"
    ours = _timed(
        [
            "tunelab",
            "eval",
            "--model",
            str(resolved.path),
            "--data",
            str(data),
            "--kind",
            "multiple_choice",
            "--batch-size",
            str(batch_size),
            "--latency-samples",
            "0",
            "--out",
            str(ours_dir),
        ],
        out / "tunelab-rss.json",
        env,
        out / "tunelab.log",
    )
    ours_metrics = json.loads((ours_dir / "metrics.json").read_text())
    ours_rows = {
        r["id"]: r["scores"] for r in (json.loads(x) for x in (ours_dir / "predictions.jsonl").read_text().splitlines())
    }
    log(f"tunelab: {ours['wall_s']:.1f} s, accuracy {ours_metrics['metrics']['accuracy']:.3f}")

    log("lm-eval: same items, same model (offline)")
    lm_dir = out / "lm_eval_out"
    theirs = _timed(
        [
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={resolved.path},dtype=float32",
            "--tasks",
            TASK_NAME,
            "--include_path",
            str(task_dir),
            "--batch_size",
            str(batch_size),
            "--device",
            "cpu",
            "--output_path",
            str(lm_dir),
            "--log_samples",
        ],
        out / "lm-eval-rss.json",
        env,
        out / "lm-eval.log",
    )
    lm_rows = _lm_eval_samples(lm_dir)
    if set(lm_rows) != set(ours_rows):
        raise RuntimeError(f"lm-eval scored {len(lm_rows)} items, tunelab {len(ours_rows)}: not the same set")
    ids = sorted(ours_rows)
    lm_acc = sum(lm_rows[i]["acc"] for i in ids) / len(ids)
    lm_norm = sum(lm_rows[i]["acc_norm"] for i in ids) / len(ids)
    acc = ours_metrics["metrics"]["accuracy"]
    norm = ours_metrics["metrics"]["accuracy_norm"]
    same = sum(1 for i in ids if lm_rows[i]["acc"] == ours_rows[i]["accuracy"]) / len(ids)
    log(f"lm-eval: {theirs['wall_s']:.1f} s, accuracy {lm_acc:.3f}")
    result: dict[str, Any] = {
        "bench": "eval",
        "setup": {
            "task": "bbc-headlines (multiple choice, 5 headlines per ~120-word article)",
            "items": len(ids),
            "model": resolved.base_model_id,
            "model_path": str(resolved.path),
            "batch_size": batch_size,
            "dtype": "float32",
            "threads": os.cpu_count(),
            "lm_eval_version": _version("lm_eval"),
            "prompt": "{context}\\n\\n{question}\\nAnswer: + ' ' + choice",
        },
        "agreement_abs_diff": abs(acc - lm_acc),
        "agreement_abs_diff_norm": abs(norm - lm_norm),
        "item_agreement": same,
        "speed_ratio": theirs["wall_s"] / ours["wall_s"],
        "memory_ratio": ours["peak_rss_gb"] / theirs["peak_rss_gb"],
        "tunelab": {
            **ours,
            "accuracy": acc,
            "accuracy_norm": norm,
            "eval_s": ours_metrics["eval_s"],
            "items_per_s": len(ids) / ours["wall_s"],
        },
        "lm_eval": {**theirs, "accuracy": lm_acc, "accuracy_norm": lm_norm, "items_per_s": len(ids) / theirs["wall_s"]},
        "targets": TARGETS,
    }
    result["met"] = {
        "agreement": result["agreement_abs_diff"] <= TARGETS["agreement_abs_diff_max"],
        "speed": result["speed_ratio"] >= TARGETS["speed_ratio_min"],
    }
    atomic_write_json(out / "bench-eval.json", result)
    return result


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "not installed"
