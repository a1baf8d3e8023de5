"""Shared fixtures: a tiny random Llama with a ChatML tokenizer, built in code (no downloads)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tunelab.hardware import cpu_flags

# tunelab's native kernels (`tunelab.kernels`) build here: AVX512-BF16, a C++ compiler and ninja, not turned off
KERNELS_CAN_BUILD = bool(
    "avx512_bf16" in cpu_flags()
    and (shutil.which("c++") or shutil.which("g++"))
    and shutil.which("ninja")
    and os.environ.get("TUNELAB_KERNELS", "1") != "0"
)

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "The market rallied as shares of the bank rose sharply on strong profits.",
    "The striker scored twice as the team won the cup final on Saturday.",
    "The minister said the government would publish the bill next week.",
    "The film won three awards and the actor thanked the director.",
    "The new phone has a faster chip and software for mobile games.",
    "business entertainment politics sport tech",
] * 20


def build_tiny_model(path: Path, *, seed: int = 0, layers: int = 2) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=tk.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        initializer_range=0.3,  # room for confident logits: the final norm bounds the hidden state
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_tok(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from tunelab.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


def chat(user: str, answer: str, system: str | None = "Classify.") -> dict[str, object]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": msgs}


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
