"""`tunelab generate`: a quick try of a model (optionally with an adapter), streamed to the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import ModelError
from tunelab.models.chat import encode_prompt
from tunelab.models.loading import load_model, load_tokenizer, resolve_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def attach_adapter(model: PreTrainedModel, adapter: Path) -> Any:
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError("not a PEFT adapter directory (no adapter_config.json)", file=adapter, field="--adapter")
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter)
    except Exception as e:
        raise ModelError(f"cannot load adapter: {e}", file=adapter, field="--adapter") from e


def generate_stream(
    prompt: str,
    *,
    model_spec: str | None = None,
    adapter: Path | None = None,
    system: str | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> str:
    """Generate a reply to `prompt`, printing tokens to stdout as they come; returns the full text."""
    import torch
    from transformers import TextStreamer

    resolved = resolve_model(model_spec)
    tok = load_tokenizer(resolved.path)
    model: Any = load_model(resolved.path)
    if adapter is not None:
        model = attach_adapter(model, adapter)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    ids = torch.tensor([encode_prompt(tok, messages)])
    torch.manual_seed(seed)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            pad_token_id=tok.pad_token_id,
            streamer=streamer,
            **sampling,
        )
    return str(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
