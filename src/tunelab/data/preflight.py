"""Template and loss-mask preflight: render an example with the model's chat template and show exactly
which tokens are trained, before a single step runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.data.formats import Record
from tunelab.models.chat import IGNORE, encode_chat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def preflight(tok: PreTrainedTokenizerBase, records: list[Record], sample: int = 200) -> dict[str, Any]:
    """One example as (text, trained) segments, and the checks that apply to every sampled record."""
    chats = [r for r in records if not r.is_text][:sample]
    if not chats:
        return {}
    eos = tok.eos_token_id
    eos_trained = 0
    for r in chats:
        enc = encode_chat(tok, r.messages)
        if eos is not None and any(lab == eos for lab in enc.labels):
            eos_trained += 1
    enc = encode_chat(tok, chats[0].messages)
    segments: list[list[Any]] = []
    for tid, lab in zip(enc.input_ids, enc.labels, strict=True):
        piece = tok.decode([tid])
        trained = lab != IGNORE
        if segments and segments[-1][1] == trained:
            segments[-1][0] += piece
        else:
            segments.append([piece, trained])
    problems = []
    if eos is not None and eos_trained < len(chats):
        problems.append(
            f"the end-of-turn token {tok.convert_ids_to_tokens(eos)!r} is not trained in "
            f"{len(chats) - eos_trained} of {len(chats)} sampled records: the model would not learn to stop"
        )
    return {
        "example_id": chats[0].id,
        "segments": [{"text": t, "trained": tr} for t, tr in segments],
        "tokens": len(enc.input_ids),
        "trained_tokens": enc.n_trained,
        "eos_token": tok.convert_ids_to_tokens(eos) if eos is not None else None,
        "eos_trained_share": eos_trained / len(chats),
        "problems": problems,
    }


def render_terminal(pf: dict[str, Any]) -> str:
    """Rich markup: trained tokens highlighted."""
    from rich.markup import escape

    return "".join(
        f"[black on green]{escape(s['text'])}[/]" if s["trained"] else f"[dim]{escape(s['text'])}[/]"
        for s in pf.get("segments", [])
    )
