"""A run's adapter folded into its base model: a plain Hugging Face directory any runtime loads.

`merged` writes safetensors weights in the HF layout with the tokenizer, its chat template (in
`tokenizer_config.json` and `chat_template.jinja`), the generation config and a model card that carries the
adapter's card over with an export section (what was merged, the sha256 of the adapter and of the base).
`peft` copies the adapter directory itself, card included. Both write atomically.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tunelab.errors import ModelError
from tunelab.fsutil import atomic_dir, dir_digest, sha256_file
from tunelab.models.generate import attach_adapter
from tunelab.models.loading import ResolvedModel, load_model, load_tokenizer, resolve_model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def base_of(adapter: Path) -> ResolvedModel:
    """The base model an adapter was trained on (its `base_model_name_or_path`, else the default model)."""
    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.is_file():
        raise ModelError("not a PEFT adapter directory (no adapter_config.json)", file=adapter, field="model")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    spec = cfg.get("base_model_name_or_path")
    return resolve_model(spec if spec and Path(spec).is_dir() else None)


def tuned_model(adapter: Path, dtype: str = "float32") -> tuple[Any, Any, ResolvedModel]:
    """(base + adapter as tunelab runs it: a PEFT model, unmerged; tokenizer; base)."""
    base = base_of(adapter)
    model = attach_adapter(load_model(base.path, dtype), adapter)
    return model.eval(), load_tokenizer(base.path), base


def _card(adapter: Path, base: ResolvedModel, kind: str, extra: dict[str, Any]) -> str:
    old = (adapter / "README.md").read_text(encoding="utf-8") if (adapter / "README.md").is_file() else ""
    lines = [
        "",
        "## Export (tunelab)",
        "",
        f"- format: {kind}",
        f"- base model: {base.base_model_id}, licence {base.license}",
        f"- base weights: sha256 {dir_digest(base.path)}",
        f"- adapter: sha256 {sha256_file(adapter / 'adapter_model.safetensors')}",
        *[f"- {k}: {v}" for k, v in extra.items()],
        "- parity with the model tunelab evaluated: see `parity.json` beside this directory",
        "",
    ]
    return (old.rstrip() + "\n" if old else "# Model exported by tunelab\n") + "\n".join(lines)


def merged(adapter: Path, out: Path, *, dtype: str = "float32") -> dict[str, Any]:
    """Fold the adapter into its base and write the merged model to `out`; returns what was written."""
    model, tok, base = tuned_model(adapter, dtype)
    merged_model = model.merge_and_unload()
    with atomic_dir(out) as tmp:
        merged_model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        template = getattr(tok, "chat_template", None)
        if isinstance(template, str) and not (tmp / "chat_template.jinja").is_file():
            (tmp / "chat_template.jinja").write_text(template, encoding="utf-8")
        cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        cfg.pop("quantization_config", None)  # a GGUF-converted base can leave one; other tools refuse it
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
        (tmp / "README.md").write_text(_card(adapter, base, "merged safetensors", {"dtype": dtype}), encoding="utf-8")
    return {"path": str(out), "weights_sha256": dir_digest(out), "base": base.base_model_id}


def peft_copy(adapter: Path, out: Path) -> dict[str, Any]:
    """The adapter directory as it is (PEFT loads it on top of the same base)."""
    base = base_of(adapter)
    with atomic_dir(out) as tmp:
        for f in sorted(adapter.iterdir()):
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        (tmp / "README.md").write_text(_card(adapter, base, "PEFT adapter", {}), encoding="utf-8")
    return {"path": str(out), "adapter_sha256": sha256_file(out / "adapter_model.safetensors")}
