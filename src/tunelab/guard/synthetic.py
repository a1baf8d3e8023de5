"""Everyday documents written by the default model, as carriers for the guard's training corpus.

The documents on disk that may be trained on (Python's documentation, package READMEs, source code, chatterbot
logs) are technical or chatty; the texts a deployed assistant reads are also news, e-mails, reviews, tickets,
minutes and posts. Without such prose among its benign training texts the guard learns that prose itself is
suspicious (its first version flagged 7% of held-out BBC articles). So `tunelab guard train` asks the default
model (SmolLM2-135M-Instruct, Apache-2.0) for one short document per genre and topic, greedily (the same model
gives the same documents), and keeps them in the user cache, keyed by the prompts and the model's weights; the
set the shipped guard was trained on ships beside its weights.
Only the training side uses them; BBC news stays held out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json
from tunelab.hardware import cpu_bf16
from tunelab.paths import tunelab_home

SHIPPED = Path(__file__).with_name("weights") / "synthetic.json"  # what `tunelab guard train` generated
GENRES = (
    "Write a short news report about {t}.",
    "Write an e-mail from a colleague to the team about {t}.",
    "Write a customer review of a product related to {t}.",
    "Write the minutes of a short meeting about {t}.",
    "Write a customer support ticket about a problem with {t}.",
    "Write a forum post asking for advice about {t}.",
    "Write a short blog post about {t}.",
    "Write a press release from a small company about {t}.",
)
TOPICS = (
    "a new bus line", "a football match", "a bakery opening", "rising rents", "a school trip", "a heat wave",
    "a software update", "a delayed flight", "a charity run", "a museum exhibition", "electric cars",
    "a water leak in the office", "a music festival", "a local election", "a broken laptop", "online banking",
    "a garden project", "a hospital's new wing", "a library closing", "a cycling race", "a price increase",
    "a job interview", "a lost parcel", "a team building day", "a vaccine campaign", "a recycling scheme",
    "a new smartphone", "a wedding", "a storm warning", "a hotel booking", "a science prize", "a farmers' market",
    "a power cut", "a film premiere", "a tax change", "a new coffee machine", "a company merger", "a road closure",
    "a school exam", "a data breach",
)  # fmt: skip


def prompts() -> list[str]:
    return [g.format(t=t) for g in GENRES for t in TOPICS]


def _cache_file(model_dir: Path) -> Path:
    h = hashlib.sha256(json.dumps(prompts()).encode())
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.name.encode() + str(f.stat().st_size).encode())
    return tunelab_home() / "guard" / f"synthetic-{h.hexdigest()[:16]}.json"


def documents(model: str | None = None, *, max_new_tokens: int = 200, batch: int = 32, log: Any = None) -> list[str]:
    """One document per prompt: the shipped set when it was made from these prompts and weights, else the
    cached one, else generated now (a few minutes) and cached."""
    import torch

    from tunelab.models.loading import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(model)
    cache = _cache_file(resolved.path)
    if cache.is_file():
        return [str(d) for d in json.loads(cache.read_text(encoding="utf-8"))["documents"]]
    if SHIPPED.is_file():
        shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
        if shipped.get("key") == cache.stem:
            return [str(d) for d in shipped["documents"]]
    tok = load_tokenizer(resolved.path)
    tok.padding_side = "left"
    lm: Any = load_model(resolved.path, "bfloat16" if cpu_bf16() else "float32")
    texts = [
        str(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True))
        for p in prompts()
    ]
    out: list[str] = []
    with torch.inference_mode():
        for k in range(0, len(texts), batch):
            enc = tok(texts[k : k + batch], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = lm.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.2,
                pad_token_id=tok.pad_token_id,
            )  # fmt: skip
            for row in gen[:, enc["input_ids"].shape[1] :]:
                out.append(str(tok.decode(row, skip_special_tokens=True)).strip())
            if log:
                log(f"synthetic documents: {len(out)}/{len(texts)}")
    atomic_write_json(cache, {"key": cache.stem, "model": resolved.base_model_id, "prompts": prompts(),
                              "generation": {"max_new_tokens": max_new_tokens, "greedy": True,
                                             "repetition_penalty": 1.2}, "documents": out})  # fmt: skip
    return out
