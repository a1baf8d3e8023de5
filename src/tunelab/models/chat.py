"""Render chat examples with the model's own chat template and mark which tokens are trained.

The mask is found from character offsets: for each assistant turn, the template is rendered up to the
generation prompt and through the turn, and the tokens whose characters fall in between are trained.
This works for any template that renders a conversation as a prefix of its continuation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken
    weights: list[float] | None = None  # per label, how much its loss counts (None: 1 each)

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tok: PreTrainedTokenizerBase, messages: list[Message], *, generation_prompt: bool) -> str:
    if not getattr(tok, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template", field="chat_template")
    out: Any = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return str(out)


def assistant_spans(tok: PreTrainedTokenizerBase, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the character span of every assistant turn (with its end-of-turn)."""
    full = render(tok, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tok, messages[:i], generation_prompt=True)
        through = render(tok, messages[: i + 1], generation_prompt=False)
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise DataError(
                "chat template does not render a conversation as a prefix of its continuation; "
                "cannot tell which tokens are the assistant's",
                field="chat_template",
            )
        spans.append((len(before), len(through)))
    return full, spans


def encode_chat(tok: PreTrainedTokenizerBase, messages: list[Message]) -> Encoded:
    """Token ids of the rendered conversation; labels are the ids inside assistant turns, else IGNORE."""
    full, spans = assistant_spans(tok, messages)
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for j, (start, end) in enumerate(enc["offset_mapping"]):
        if end <= start:
            continue
        if any(s <= start and end <= e for s, e in spans):
            labels[j] = ids[j]
    return Encoded(ids, labels)


def encode_prompt(tok: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Token ids of the conversation up to the assistant's turn (what generation starts from)."""
    prompt = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    text = render(tok, prompt, generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def encode_text(tok: PreTrainedTokenizerBase, text: str) -> Encoded:
    """Plain text (continued pre-training): every token is trained, ending with EOS when the model has one."""
    ids: list[int] = list(tok(text, add_special_tokens=False)["input_ids"])
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    return Encoded(ids, list(ids))


def encode_record(tok: PreTrainedTokenizerBase, messages: list[Message]) -> Encoded:
    """A record as the audit returns it: a conversation, or a single `text` turn."""
    if len(messages) == 1 and messages[0]["role"] == "text":
        return encode_text(tok, messages[0]["content"])
    return encode_chat(tok, messages)
