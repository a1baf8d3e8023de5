"""A job request in OpenAI's shape, and how it maps onto tunelab's run configuration.

OpenAI's hyperparameters, honestly mapped:
- `n_epochs` (auto: 1): optimizer steps = ceil(training records x n_epochs / batch_size); tunelab's sampler
  visits every record once per epoch in a seeded order.
- `batch_size` (auto: 8): examples per optimizer step (`batch.size`).
- `learning_rate_multiplier` (auto: 1.0): times tunelab's base rate for the method (LoRA 5e-4, full 2e-5).
- `dpo.hyperparameters.beta` (auto: 0.1): DPO's beta.
tunelab's own settings go under the request's `tunelab` field (the SDK sends it with `extra_body`), see
`TunelabExtras`; `metadata` is kept and filterable (`metadata.sweep` groups the jobs of a sweep).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tunelab.config import RunConfig, apply_overrides, build_config

BASE_LR = {"lora": 5e-4, "full": 2e-5}
Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int | Auto | None = Field(None)
    batch_size: int | Auto | None = Field(None)
    learning_rate_multiplier: float | Auto | None = Field(None)
    beta: float | Auto | None = Field(None)  # DPO only

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_int(cls, v: Any) -> Any:
        if isinstance(v, int) and not 1 <= v <= 1000:
            raise ValueError("must be between 1 and 1000")
        return v

    @field_validator("learning_rate_multiplier", "beta")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if isinstance(v, float | int) and not 0 < float(v) <= 100:
            raise ValueError("must be above 0 and at most 100")
        return v


class _MethodPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["supervised", "dpo"] = "supervised"
    supervised: _MethodPart | None = None
    dpo: _MethodPart | None = None


class TunelabExtras(BaseModel):
    """tunelab's settings beyond OpenAI's: `extra_body={"tunelab": {...}}` in the SDK."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["lora", "full"] = "lora"  # what trains: a LoRA adapter, or every weight
    lora_rank: int = Field(16, ge=1, le=256)
    lora_alpha: int | None = Field(None, ge=1)  # default: twice the rank
    max_steps: int | None = Field(None, ge=1)  # overrides the steps n_epochs gives
    checkpoint_every: int | None = Field(None, ge=1)  # default: a quarter of the steps (at least 1)
    max_length: int = Field(1024, ge=16, le=32768)  # tokens; longer records are quarantined by the audit
    eval_limit: int | None = Field(200, ge=1)  # held-out items evaluated on base and tuned (None: all)
    eval_max_new_tokens: int | None = Field(None, ge=1, le=1024)
    probes: list[Literal["safety", "hallucination", "bias", "robustness", "general", "memorisation"]] = Field(
        default_factory=list
    )
    licence: str | None = None  # the data's licence id (SPDX): recorded in its datacard, gated by the audit policy
    force: bool = False  # train even if the data audit fails (recorded in the manifest)
    set: list[str] = Field(default_factory=list)  # raw `section.key=value` overrides of tunelab's config


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI adds fields (integrations...): accepted, not used

    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI in favour of method.*
    method: Method | None = None
    suffix: str | None = Field(None, max_length=64)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    tunelab: TunelabExtras = Field(default_factory=TunelabExtras)

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]*", v):
            raise ValueError("may hold letters, digits, '-', '_' and '.' only")
        return v or None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > 16 or any(len(k) > 64 or len(x) > 512 for k, x in v.items())):
            raise ValueError("at most 16 keys of up to 64 characters, values of up to 512")
        return v

    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    def given(self) -> Hyperparameters:
        m = self.method
        part = (m.dpo if m.type == "dpo" else m.supervised) if m else None
        if part is not None:
            return part.hyperparameters
        return self.hyperparameters or Hyperparameters()


def resolve(req: JobCreate, n_train: int) -> dict[str, Any]:
    """The hyperparameters as they will run ('auto' replaced), and the steps they give."""
    h = req.given()
    n_epochs = 1 if h.n_epochs in (None, "auto") else int(h.n_epochs)
    batch = 8 if h.batch_size in (None, "auto") else int(h.batch_size)
    mult = 1.0 if h.learning_rate_multiplier in (None, "auto") else float(h.learning_rate_multiplier)
    out: dict[str, Any] = {"n_epochs": n_epochs, "batch_size": batch, "learning_rate_multiplier": mult}
    if req.method_type() == "dpo":
        out["beta"] = 0.1 if h.beta in (None, "auto") else float(h.beta)
    steps = req.tunelab.max_steps or max(1, math.ceil(n_train * n_epochs / batch))
    out["steps"] = steps
    return out


def run_config(spec: dict[str, Any], train: Path, eval_: Path | None) -> RunConfig:
    """tunelab's run configuration for a job `spec` (as stored), training on `train`, evaluated on `eval_`."""
    x = TunelabExtras.model_validate(spec["tunelab"])
    hp = spec["hyperparameters"]
    steps = int(hp["steps"])
    every = x.checkpoint_every or max(1, steps // 4)
    data: dict[str, Any] = {
        "model": {"name": spec.get("base_spec")},
        "data": {"task": None, "train": [str(train)], "eval": [str(eval_)] if eval_ else [], "seed": spec["seed"],
                 "max_length": x.max_length},
        "method": {"kind": x.kind, "objective": "dpo" if spec["method"]["type"] == "dpo" else "sft",
                   "r": x.lora_rank, "alpha": x.lora_alpha or 2 * x.lora_rank},
        "optimizer": {"lr": BASE_LR[x.kind] * float(hp["learning_rate_multiplier"])},
        "batch": {"size": int(hp["batch_size"])},
        "checkpoint": {"every": every if every < steps else 0, "keep_last": 3},
        "train": {"max_steps": steps, "seed": spec["seed"]},
    }  # fmt: skip
    if "beta" in hp:
        data["method"]["beta"] = float(hp["beta"])
    return build_config(apply_overrides(data, list(x.set)), f"job {spec.get('id', '')} tunelab.set")


def model_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's shape: ft:<base>:<owner>:<suffix>:<id>."""
    return f"ft:{base}:{_slug(owner)}:{suffix or ''}:{job_id.split('-', 1)[-1][:8]}"


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9_\-]+", "-", s.lower()).strip("-") or "owner"
