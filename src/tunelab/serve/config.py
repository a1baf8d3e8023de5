"""`serve.yaml`: the server's typed configuration (unknown keys are errors naming the key), and its loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from tunelab.errors import ConfigError
from tunelab.serve.guards import GuardConfig


class JobsConfig(BaseModel):
    """The fine-tuning jobs service (`/v1/files`, `/v1/fine_tuning/jobs`) and its worker."""

    model_config = {"extra": "forbid"}

    enabled: bool = True
    worker: bool = True  # `tunelab serve` starts `tunelab worker` beside it (false: run one yourself)
    concurrency: int = Field(1, ge=1)  # jobs trained at the same time by one worker
    dir: str | None = None  # uploaded files and job run directories (default $TUNELAB_HOME/jobs)
    max_file_bytes: int = Field(512 * 1024 * 1024, ge=1024)  # per upload, for keys without their own limit
    max_queued_jobs: int = Field(16, ge=1)  # queued + running jobs per key, for keys without their own limit
    # how the worker starts training: local (one process), torchrun (DDP over nproc_per_node processes), or
    # template: `launch_template` with {cmd} replaced by the (torchrun or local) command, shell-quoted, e.g.
    # "srun --nodes 1 --gres gpu:2 {cmd}" to run each job's training as a step of a Slurm allocation
    launcher: Literal["local", "torchrun", "template"] = "local"
    nproc_per_node: int = Field(2, ge=1)
    launch_template: str | None = None
    template_torchrun: bool = False  # template: wrap the torchrun command rather than the local one
    poll_s: float = Field(0.5, gt=0, le=10)  # how often the worker looks for work and for cancels
    export_items: int = Field(100, ge=1)  # eval items an export's parity check runs on (the first N)

    @model_validator(mode="after")
    def _template(self) -> JobsConfig:
        if self.launcher == "template" and (not self.launch_template or "{cmd}" not in self.launch_template):
            raise ValueError("launcher: template needs launch_template holding {cmd}")
        return self


class WatermarkConfig(BaseModel):
    """A keyed green-list watermark on generated replies (govern/watermark.py); detect with `tunelab watermark
    detect`. The key stays on the server."""

    model_config = {"extra": "forbid"}

    enabled: bool = False
    key_file: str | None = None  # hex key; default $TUNELAB_HOME/watermark.key, made (mode 0600) on first use
    gamma: float = Field(0.25, gt=0, lt=1)  # share of the vocabulary that is green at each step
    # added to the green tokens' logits: 1.5 measured best on the default model (bench watermark's by_delta:
    # TPR 0.995 at FPR 1% over 200 tokens with +9.3% perplexity; 2.0 gave 0.99 with +14.4%, 1.0 0.94 with +2.7%)
    delta: float = Field(1.5, ge=0, le=20)
    models: list[str] | None = None  # served model names whose replies are marked (None: every model)
    keys: list[str] | None = None  # API key names whose replies are marked (None: every key)


def lean_weights(quantize: str) -> str | None:
    """What `quantize` (auto | none | fp16 | bf16 | int8) means for the lean decoder on this machine (None: fp32).

    auto: bf16 where the CPU multiplies bf16 in hardware (the fastest at batch 8 there: AMX), else fp16 where
    fbgemm runs (x86: half the bytes to read, products in fp32), else fp32."""
    from tunelab.hardware import cpu_bf16, fbgemm

    if quantize == "auto":
        return "bf16" if cpu_bf16() else "fp16" if fbgemm() else None
    return None if quantize == "none" else quantize


class ImagesConfig(BaseModel):
    """`POST /v1/images/generations`: a class-conditioned image base and its adapters (see docs/images.md)."""

    model_config = {"extra": "forbid"}

    enabled: bool = False  # also on when `adapters` names any
    base: str | None = None  # an image base directory; None: tunelab's default (digits-unet-v1, made once)
    adapters: dict[str, Path] = Field(default_factory=dict)  # served name -> image run's model/ directory
    sample_steps: int = Field(25, ge=1, le=1000)  # DDIM steps per image
    max_n: int = Field(10, ge=1, le=100)  # images per request

    @property
    def on(self) -> bool:
        return self.enabled or bool(self.adapters)


class ServeConfig(BaseModel):
    model_config = {"extra": "forbid"}

    model: str | None = None
    adapters: dict[str, Path] = Field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    store: str | None = None  # path of the SQLite file (default $TUNELAB_HOME/tunelab.db)
    max_batch: int = Field(8, ge=1)
    engine: Literal["auto", "lean", "hf"] = "auto"  # lean decoder where it knows the model, else transformers
    # tunelab: its own engine (CPU or GPU); vllm: vLLM's engine on a GPU (serve/vllm_engine.py), with `vllm:`
    # passed on to its EngineArgs; the API, keys, limits, guards and ledger are the same either way
    backend: Literal["tunelab", "vllm"] = "tunelab"
    vllm: dict[str, Any] = Field(default_factory=dict)
    # weights of the lean decoder (`lean_weights`): auto = bf16 where the CPU multiplies bf16 in hardware (AMX,
    # AVX512-BF16), else fp16 (x86), else fp32 ("none"); fp16 / bf16 / int8: half / half / a quarter of the bytes
    # to read per token, close to but not equal to fp32 (docs/serving.md has how close)
    quantize: Literal["auto", "none", "fp16", "bf16", "int8"] = "auto"
    max_queue: int = Field(64, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_tokens: int = Field(2048, ge=1)  # the most a request may ask for
    max_context: int | None = Field(None, ge=16)  # default: the model's own
    adapter_cache: int = Field(4, ge=1)  # adapters kept loaded (LRU)
    require_manifest: bool = False  # refuse adapters without a manifest to check their files against
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)  # model -> input_per_1k / output_per_1k
    retry_after_s: int = Field(2, ge=1)
    guards: GuardConfig = Field(default_factory=GuardConfig)
    model_guards: dict[str, GuardConfig] = Field(default_factory=dict)  # per served model, replacing `guards`
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)

    @model_validator(mode="after")
    def _marked_by_our_sampler(self) -> ServeConfig:
        # the mark is added by tunelab's sampler; vLLM's samples on its own, so its replies would carry the
        # watermark's fingerprint without the mark
        if self.watermark.enabled and self.backend == "vllm":
            raise ValueError("watermark.enabled needs backend: tunelab (vLLM's sampler does not add the mark)")
        return self


def load_serve_config(path: Path | None, **overrides: Any) -> ServeConfig:
    import yaml
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError("no such file", file=path, field="--config")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"invalid YAML: {e}", file=path) from None
        base = path.parent
        data["adapters"] = {
            k: str((base / v) if not Path(v).is_absolute() else v) for k, v in (data.get("adapters") or {}).items()
        }
        images = data.get("images")
        if isinstance(images, dict):  # image adapter and base paths in the config are relative to it
            images["adapters"] = {k: str(base / v) for k, v in (images.get("adapters") or {}).items()}
            if isinstance(images.get("base"), str) and not Path(images["base"]).is_absolute():
                images["base"] = str(base / images["base"])
        guard_sets = [data.get("guards"), *(data.get("model_guards") or {}).values()]
        for g in guard_sets:  # a classifier file named in the config is relative to the config
            inj = g.get("injection") if isinstance(g, dict) else None
            if isinstance(inj, dict) and isinstance(inj.get("classifier_model"), str):
                inj["classifier_model"] = str(base / inj["classifier_model"])
    for k, v in overrides.items():
        if v is None or v == {}:
            continue
        if k == "adapters":
            data["adapters"] = {**data.get("adapters", {}), **v}
        else:
            data[k] = v
    try:
        return ServeConfig(**data)
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(err["msg"], file=path, field=".".join(str(x) for x in err["loc"])) from None
