"""Model card (README.md with Hugging Face YAML front matter) for an adapter a run produced."""

from __future__ import annotations

from typing import Any

import yaml


def model_card(
    *,
    base_model: str,
    base_license: str,
    task: str,
    labels: list[str],
    dataset: dict[str, Any],
    results: dict[str, Any],
    training: dict[str, Any],
    provenance: dict[str, Any],
) -> str:
    base, tuned, comp = results["base"], results["tuned"], results["comparison"]
    meta = {
        "base_model": base_model,
        "library_name": "peft",
        "license": "other",
        "license_name": dataset["licence"]["id"],
        "license_link": dataset.get("homepage"),
        "pipeline_tag": "text-generation",
        "tags": ["tunelab", "lora", "text-classification"],
        "datasets": [dataset["name"]],
        "metrics": ["accuracy", "f1"],
        "model-index": [
            {
                "name": f"{base_model.split('/')[-1]}-{task}-lora",
                "results": [
                    {
                        "task": {"type": "text-classification", "name": task},
                        "dataset": {"type": dataset["name"], "name": dataset["name"], "split": "eval"},
                        "metrics": [
                            {"type": "accuracy", "value": round(tuned["accuracy"], 4), "name": "accuracy"},
                            {"type": "f1", "value": round(tuned["macro_f1"], 4), "name": "macro-F1"},
                        ],
                    }
                ],
            }
        ],
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    lo, hi = comp["ci95"]
    return f"""---
{front}---

# {base_model.split("/")[-1]} · {task} (LoRA adapter)

A LoRA adapter for [{base_model}](https://huggingface.co/{base_model}) (base licence: {base_license})
that classifies text into one of: {", ".join(labels)}. Made by tunelab; every number below was measured
by the run that produced this adapter.

## Results on the held-out eval set ({tuned["n"]} examples)

| | base | tuned |
|---|---|---|
| accuracy | {base["accuracy"]:.3f} | {tuned["accuracy"]:.3f} |
| macro-F1 | {base["macro_f1"]:.3f} | {tuned["macro_f1"]:.3f} |
| latency p50 (s) | {base["latency_p50_s"]:.3f} | {tuned["latency_p50_s"]:.3f} |

Accuracy change {comp["delta"]:+.3f} (paired bootstrap 95% CI [{lo:+.3f}, {hi:+.3f}]),
McNemar exact p = {comp["p_value"]:.2g}.

## Training data and licence

- Dataset: {dataset["name"]} — {dataset.get("source", "")}
- Licence: **{dataset["licence"]["id"]}** — {dataset["licence"].get("name", "")}.
  {dataset["licence"].get("text", "")}
- Because of the data's licence this adapter inherits its restrictions: do not use it commercially.

## Training

{_bullets(training)}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{base_model}")  # or the local base directory
model = PeftModel.from_pretrained(base, "path/to/this/directory")
```

## Provenance

{_bullets(provenance)}

## Limitations

Evaluated on one held-out split of one dataset; accuracy on other news sources, other eras or other
languages is unmeasured. The model answers with a label even for text that fits no label.
"""


def _bullets(d: dict[str, Any]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in d.items())


def training_card(
    *,
    base_model: str,
    base_license: str,
    method: Any,
    datacard: dict[str, Any],
    summary: dict[str, Any],
    config: dict[str, Any],
    provenance: dict[str, Any],
) -> str:
    """Model card for what `tunelab train` made: an adapter or a full checkpoint, with measured numbers only."""
    lora = method.kind == "lora"
    lic = datacard.get("licence") or {}
    meta = {
        "base_model": base_model,
        "library_name": "peft" if lora else "transformers",
        "license": "other",
        "license_name": lic.get("id", "unknown"),
        "pipeline_tag": "text-generation",
        "tags": ["tunelab", "lora" if lora else "full-fine-tune"],
        "datasets": [datacard.get("name", "user data")],
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    what = (
        f"A LoRA adapter (r={method.r}, alpha={method.alpha}) on {', '.join(method.target_modules)}"
        if lora
        else "A fully fine-tuned checkpoint (every weight trained)"
    )
    use = (
        f'base = AutoModelForCausalLM.from_pretrained("{base_model}")  # or the local base directory\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/directory")'
        if lora
        else 'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")'
    )
    eval_loss = summary.get("eval_loss")
    training = {
        "steps": summary["steps"],
        "global batch (examples)": summary["global_batch"],
        "processes": summary["processes"],
        "learning rate": config["optimizer"]["lr"],
        "schedule": f"{config['schedule']['kind']}, {config['schedule']['warmup_steps']} warmup steps",
        "objective": (
            f"DPO (beta {config['method']['beta']}) on prompt/chosen/rejected pairs, against the starting model"
            if summary.get("objective") == "dpo"
            else "next-token loss on assistant tokens only (text records: every token)"
        ),
        "training examples": summary["examples"],
        "final training loss": f"{summary['final_loss']:.4f}",
        "held-out loss": f"{eval_loss:.4f}" if eval_loss is not None else "no eval data",
        "throughput": f"{summary['tokens_per_s']:.0f} tokens/s ({summary['precision']})",
        "data audit": summary["audit_verdict"] + (" — trained anyway with --force" if summary["forced"] else ""),
    }
    return f"""---
{front}---

# {base_model.split("/")[-1]} · fine-tuned with tunelab

{what} of [{base_model}](https://huggingface.co/{base_model}) (base licence: {base_license}).
Every number below was measured by the run that produced it.

## Training

{_bullets(training)}

## Training data and licence

- Dataset: {datacard.get("name", "user data")} {("— " + datacard["source"]) if datacard.get("source") else ""}
- Licence: **{lic.get("id", "unknown")}** {lic.get("name", "")}. The weights inherit the data's restrictions.

## Use

```python
from transformers import AutoModelForCausalLM
from peft import PeftModel

{use}
```

## Provenance

{_bullets(provenance)}

## Limitations

Only the training and held-out loss were measured here; run `tunelab eval` for task quality, safety and
bias before deciding to use it.
"""
