from __future__ import annotations

from tunelab.models.chat import IGNORE, encode_chat, encode_prompt


def _trained_text(tok, msgs) -> str:  # type: ignore[no-untyped-def]
    enc = encode_chat(tok, msgs)
    return tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE])


def test_only_assistant_tokens_and_end_of_turn_are_trained(tiny_tok) -> None:  # type: ignore[no-untyped-def]
    msgs = [
        {"role": "system", "content": "Classify."},
        {"role": "user", "content": "The striker scored."},
        {"role": "assistant", "content": "sport"},
    ]
    assert _trained_text(tiny_tok, msgs) == "sport<|im_end|>\n"
    enc = encode_chat(tiny_tok, msgs)
    assert enc.labels[-1] != IGNORE and enc.labels[0] == IGNORE


def test_every_assistant_turn_is_trained_in_multi_turn(tiny_tok) -> None:  # type: ignore[no-untyped-def]
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "two"},
    ]
    assert _trained_text(tiny_tok, msgs) == "one<|im_end|>\ntwo<|im_end|>\n"


def test_prompt_stops_at_the_generation_prompt(tiny_tok) -> None:  # type: ignore[no-untyped-def]
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "there"}]
    ids = encode_prompt(tiny_tok, msgs)
    assert tiny_tok.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    full = encode_chat(tiny_tok, msgs).input_ids
    assert full[: len(ids)] == ids
