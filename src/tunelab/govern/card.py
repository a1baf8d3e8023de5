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
