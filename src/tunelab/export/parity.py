"""Does the exported model behave like the model tunelab evaluated? Measured by an independent runtime.

The reference is tunelab's tuned model as it was evaluated: the base with the PEFT adapter, unmerged, fp32,
prompts rendered by the base tokenizer's chat template. Each candidate is loaded by a runtime that shares no
code path with it: plain `transformers` from the exported directory (merged), or llama.cpp through
llama-cpp-python (GGUF), each with *its own* tokenizer and chat template (llama.cpp: the template stored in
the GGUF's metadata). Per eval item:

- `prompt_tokens_equal`: the candidate's own rendering and tokenization of the chat equals the reference's
  (a lost or changed chat template, a BOS added twice, a different tokenizer show here first);
- `greedy_equal`: the greedy reply (until an end-of-turn token, at most `max_new` tokens) has the same text;
- `top1` and `kl`: on the reference's own token sequence (prompt + its greedy reply), teacher-forced, at every
  position from the last prompt token on: does the candidate's most likely next token agree, and the KL
  divergence KL(reference || candidate) of the next-token distributions;
- for classification: the accuracy of each model's reply against the label, both parsed by the evaluation's
  own `parse_label`.

Gates (`GATES`): every prompt tokenized as the reference does, the share of top-1 agreement and the accuracy
difference, by export kind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from tunelab.evaluate.items import EvalItem
from tunelab.evaluate.metrics import parse_label
from tunelab.evaluate.run import chat_messages

# kind -> (min top-1 agreement or None, max |accuracy difference| in points)
GATES: dict[str, tuple[float | None, float]] = {
    "merged": (0.99, 1.0),
    "peft": (0.99, 1.0),
    "f16": (0.99, 1.0),
    "q8_0": (None, 2.0),
    "q4_k_m": (None, 5.0),
    "lora_f16": (0.99, 1.0),  # the base's f16 GGUF with the LoRA-only GGUF applied by llama.cpp
}


@dataclass
class Item:
    id: str
    messages: list[dict[str, str]]
    label: str | None  # classification: the reference label


def items_of(eval_items: Sequence[EvalItem], system: str | None, limit: int | None) -> list[Item]:
    chosen = list(eval_items)[:limit] if limit else list(eval_items)
    out = []
    for it in chosen:
        label = it.reference if it.kind == "classification" else None
        out.append(Item(it.id, chat_messages(it, system), label))
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class HFRuntime:
    """A model run by plain transformers (the reference, or a merged export loaded from its directory)."""

    def __init__(self, model: Any, tok: Any, name: str) -> None:
        from tunelab.evaluate.generation import eos_ids

        self.model, self.tok, self.name = model, tok, name
        self.eos = eos_ids(model, tok)

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        from tunelab.models.chat import encode_prompt

        return encode_prompt(self.tok, messages)

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids])).logits[0]
        return out.to(torch.float32).numpy()

    def greedy(self, ids: list[int], max_new: int) -> list[int]:
        import torch

        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new, do_sample=False, eos_token_id=self.eos,
                pad_token_id=self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos[0],
            )  # fmt: skip
        new = [int(t) for t in out[0, len(ids) :]]
        cut = next((k for k, t in enumerate(new) if t in self.eos), None)
        return new if cut is None else new[: cut + 1]

    def text(self, ids: list[int]) -> str:
        from tunelab.evaluate.generation import decode_reply

        return decode_reply(self.tok, ids, self.eos)


class LlamaCppRuntime:
    """A GGUF file run by llama.cpp (llama-cpp-python), with the tokenizer and chat template in the file."""

    def __init__(self, path: Path, n_ctx: int = 4096, threads: int | None = None, lora: Path | None = None) -> None:
        import os

        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from tunelab.export.llamacpp import load

        self.name = path.name + (f" + {lora.name}" if lora else "")
        self.llm = load(str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                        n_threads=threads or os.cpu_count(), n_batch=512,
                        lora_path=str(lora) if lora else None)  # fmt: skip
        meta = self.llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise ValueError("the GGUF holds no chat template (tokenizer.chat_template)")

        def token(key: str) -> str:
            tid = meta.get(key)
            return self.llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid else ""

        self.formatter = Jinja2ChatFormatter(template, eos_token=token("tokenizer.ggml.eos_token_id"),
                                             bos_token=token("tokenizer.ggml.bos_token_id"))  # fmt: skip
        self.eos = {self.llm.token_eos()}
        eot = getattr(self.llm._model, "token_eot", None)
        if callable(eot) and eot() >= 0:
            self.eos.add(int(eot()))

    def close(self) -> None:
        """Free llama.cpp's model and context now (left to the garbage collector, they are freed at interpreter
        exit, when llama-cpp-python's own clean-up warns about files it can no longer close)."""
        self.llm.close()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        rendered = self.formatter(messages=cast(Any, messages))
        add_bos = bool(self.llm.metadata.get("tokenizer.ggml.add_bos_token") in ("true", True))
        return list(self.llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=add_bos, special=True))

    def logits(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], max_new: int) -> list[int]:
        self.llm.reset()
        out: list[int] = []
        self.llm.eval(ids)
        for _ in range(max_new):
            nxt = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
            out.append(nxt)
            if nxt in self.eos:
                break
            self.llm.eval([nxt])
        return out

    def text(self, ids: list[int]) -> str:
        keep = [t for t in ids if t not in self.eos]
        return self.llm.detokenize(keep).decode("utf-8", "replace").strip()


def compare(
    ref: HFRuntime, cand: Any, items: Sequence[Item], labels: Sequence[str], *, max_new: int = 16,
    ref_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The per-item comparison and its summary (see the module's docstring)."""
    rows = []
    t0 = time.perf_counter()
    cache = ref_cache if ref_cache is not None else {}
    for it in items:
        if it.id not in cache:  # the reference's prompt, greedy reply and logits, once for all candidates
            p = ref.prompt_ids(it.messages)
            g = ref.greedy(p, max_new)
            cache[it.id] = (p, g, _log_softmax(ref.logits(p + g)[len(p) - 1 : len(p) + len(g)]))
        p_ref, g_ref, lp_ref = cache[it.id]
        p_c = cand.prompt_ids(it.messages)
        g_c = cand.greedy(p_c, max_new)
        lp_c = _log_softmax(cand.logits(p_ref + g_ref)[len(p_ref) - 1 : len(p_ref) + len(g_ref)])
        v = min(lp_ref.shape[-1], lp_c.shape[-1])
        top1 = (lp_ref[:, :v].argmax(-1) == lp_c[:, :v].argmax(-1)).astype(float)
        kl = (np.exp(lp_ref[:, :v]) * (lp_ref[:, :v] - lp_c[:, :v])).sum(-1)
        out_ref, out_c = ref.text(g_ref), cand.text(g_c)
        row: dict[str, Any] = {
            "id": it.id,
            "prompt_tokens_equal": p_c == p_ref,
            "greedy_equal": out_c == out_ref,
            "top1": float(top1.mean()),
            "kl": float(kl.mean()),
            "positions": len(top1),
            "reference_output": out_ref,
            "output": out_c,
        }
        if it.label is not None and labels:
            row["reference_correct"] = parse_label(out_ref, labels) == it.label
            row["correct"] = parse_label(out_c, labels) == it.label
        rows.append(row)
    n = max(1, len(rows))
    positions = sum(r["positions"] for r in rows)
    summary: dict[str, Any] = {
        "runtime": cand.name,
        "items": len(rows),
        "prompt_tokens_equal": sum(r["prompt_tokens_equal"] for r in rows) / n,
        "greedy_agreement": sum(r["greedy_equal"] for r in rows) / n,
        "top1_agreement": sum(r["top1"] * r["positions"] for r in rows) / max(1, positions),
        "mean_kl": sum(r["kl"] * r["positions"] for r in rows) / max(1, positions),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if rows and "correct" in rows[0]:
        summary["reference_accuracy"] = sum(r["reference_correct"] for r in rows) / n
        summary["accuracy"] = sum(r["correct"] for r in rows) / n
        summary["accuracy_delta_points"] = 100 * (summary["accuracy"] - summary["reference_accuracy"])
    return {"summary": summary, "rows": rows}


def gate(kind: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Whether `summary` passes the gate of `kind`, and why not."""
    min_top1, max_points = GATES[kind]
    failures = []
    if summary["prompt_tokens_equal"] < 1.0:  # the chat is rendered or tokenized differently: template, BOS...
        failures.append(f"prompt tokens differ from the reference's on {1 - summary['prompt_tokens_equal']:.0%} "
                        "of the items (chat template or tokenizer)")  # fmt: skip
    if min_top1 is not None and summary["top1_agreement"] < min_top1:
        failures.append(f"top-1 agreement {summary['top1_agreement']:.4f} < {min_top1}")
    delta = summary.get("accuracy_delta_points")
    if delta is not None and not math.isnan(delta) and abs(delta) > max_points:
        failures.append(f"accuracy differs by {delta:+.1f} points (at most {max_points})")
    return {"kind": kind, "min_top1": min_top1, "max_accuracy_points": max_points, "passed": not failures,
            "failures": failures}  # fmt: skip
