"""Typed run configuration: nested sections with defaults; unknown keys are errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.data.licence import DataPolicy
from tunelab.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    name: str | None = None  # None: the bundled default; else a local HF dir or a .gguf file
    dtype: Literal["float32", "bfloat16"] = "float32"


class DataSection(_Section):
    task: str | None = "bbc-topics"  # a built-in task; set null and give `train` to use your own files
    train: list[Path] = Field(default_factory=list)  # JSONL/CSV/Parquet files (relative to the config file)
    eval: list[Path] = Field(default_factory=list)
    format: Literal["auto", "chat", "completion", "classification", "text"] = "auto"
    seed: int = 0
    eval_per_class: int = Field(40, ge=1)
    max_words: int = Field(64, ge=8)  # article words kept in the user turn
    max_length: int = Field(256, ge=16)  # tokens; longer records are quarantined
    # random secrets planted in the training data (data/canaries.json, flagged in the manifest), each seen
    # `canary_repeats` times; the memorisation probe measures their exposure
    canaries: int = Field(0, ge=0, le=256)
    canary_repeats: int = Field(4, ge=1, le=100)


class MethodSection(_Section):
    kind: Literal["lora", "full"] = "lora"  # a LoRA adapter, or every weight
    objective: Literal["sft", "dpo"] = "sft"  # dpo: {prompt, chosen, rejected} data, against the frozen start
    beta: float = Field(0.1, gt=0)  # DPO: strength of the pull towards the reference model
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class OptimizerSection(_Section):
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = Field(1.0, gt=0)


class ScheduleSection(_Section):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(4, ge=0)


class BatchSection(_Section):
    size: int = Field(8, ge=1)  # examples per optimizer step, over all processes, before grad_accum
    grad_accum: int = Field(1, ge=1)  # global batch = size x grad_accum examples
    packing: bool = True  # pack examples into one row (no padding); false: right-padded rows
    max_tokens: int = Field(1024, ge=16)  # tokens per forward pass; bounds activation memory (~2 MB/token, 135M model)


class CheckpointSection(_Section):
    every: int = Field(0, ge=0)  # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = Field(2, ge=1)


class TrainSection(_Section):
    max_steps: int = Field(48, ge=1)
    seed: int = 0
    threads: int | None = None  # None: the cores available to this process
    # auto: bf16 where the hardware has it (CUDA, AVX512-BF16/AMX CPUs); LoRA then holds the frozen weights in bf16
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    fused_lora: bool = True  # LoRA layers as one addmm in training (same math as peft's forward)
    compile: bool = False  # torch.compile the decoder layers: faster steps, less memory, after a one-off compile


class EvalSection(_Section):
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(8, ge=1)
    latency_samples: int = Field(16, ge=0)  # single-request latency is measured on this many examples
    bootstrap_resamples: int = Field(10_000, ge=100)
    seed: int = 0
    limit: int | None = Field(None, ge=1)  # evaluate only the first N eval examples
    # probe sections run on base and tuned: safety, hallucination, bias, robustness, general
    probes: list[Literal["safety", "hallucination", "bias", "robustness", "general", "memorisation"]] = Field(
        default_factory=list
    )
    robustness_limit: int = Field(100, ge=1)  # task items perturbed for the robustness probe


class ImageSection(_Section):
    """`task: image`: a class-conditioned diffusion UNet (see docs/images.md)."""

    resolution: int = Field(16, ge=8, le=1024)  # images are centre-cropped and resized to this square
    channels: Literal[1, 3] = 1  # 1: grey (L), 3: RGB
    # LoRA targets in a diffusers UNet: attention projections, ResNet convolutions, timestep/class projections
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]
    )
    sample_steps: int = Field(25, ge=1, le=1000)  # DDIM steps when sampling (evaluation and serving)
    eval_seeds: int = Field(20, ge=2)  # samples per class in evaluation, the same seeds for base and tuned
    # prior preservation (as DreamBooth): this many of the base model's own samples of each base class the data
    # does not name are trained on beside it, so that the adapter does not unlearn them; 0 turns it off
    prior_images: int = Field(8, ge=0, le=1000)


# Where `task: image` differs from the text defaults; a value the config sets itself wins.
IMAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"task": "digits-5to9"},
    "method": {"r": 8, "alpha": 8},
    "optimizer": {"lr": 2e-3},
    "schedule": {"warmup_steps": 20},
    "batch": {"size": 32, "packing": False},
    "train": {"max_steps": 600},
}


class RunConfig(_Section):
    task: Literal["text", "image"] = "text"
    image: ImageSection = Field(default_factory=lambda: ImageSection())
    model: ModelSection = Field(default_factory=lambda: ModelSection())
    data: DataSection = Field(default_factory=lambda: DataSection())
    method: MethodSection = Field(default_factory=lambda: MethodSection())
    optimizer: OptimizerSection = Field(default_factory=lambda: OptimizerSection())
    schedule: ScheduleSection = Field(default_factory=lambda: ScheduleSection())
    batch: BatchSection = Field(default_factory=lambda: BatchSection())
    checkpoint: CheckpointSection = Field(default_factory=lambda: CheckpointSection())
    train: TrainSection = Field(default_factory=lambda: TrainSection())
    eval: EvalSection = Field(default_factory=lambda: EvalSection())
    policy: DataPolicy = Field(default_factory=lambda: DataPolicy())

    def dump(self) -> dict[str, Any]:
        """The config as JSON-able data, as written to a run's config.yaml (a text run leaves `image` out)."""
        data = self.model_dump(mode="json")
        if self.task == "text":
            data.pop("image")
        return data

    @model_validator(mode="before")
    @classmethod
    def _image_defaults(cls, data: Any) -> Any:
        if not (isinstance(data, dict) and data.get("task") == "image"):
            return data
        out = dict(data)
        for section, values in IMAGE_DEFAULTS.items():
            given = out.get(section)
            if given is None or isinstance(given, dict):
                out[section] = {**values, **(given or {})}
        return out


def config_error(e: ValidationError, source: str) -> ConfigError:
    """One line naming the file and the dotted key, from pydantic's first complaint."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    return ConfigError(msg, file=source, field=loc)


def build_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, source) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=c` assignments; values parse as YAML scalars (`3`, `1e-4`, `true`, `[q_proj, v_proj]`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value", field="--set")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key!r}: {p!r} is not a section", field="--set")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config: {e.strerror}", file=path) from e
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", file=path) from e
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("a config must be a YAML mapping", file=path)
        data = loaded or {}
    return build_config(apply_overrides(data, overrides or []), source)
