"""The LoRA recipe, top to bottom: wrap the model with `peft`, encode, loop, save the adapter.

Loss is taken on assistant tokens only, and the vocabulary projection runs only on those positions
(see `losses.masked_lm_loss`). Checkpoint/resume and packing belong to the training-engine issue.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import LoraSection, RunConfig
from tunelab.data.formats import Record
from tunelab.errors import DataError
from tunelab.fsutil import atomic_dir
from tunelab.models.chat import encode_chat
from tunelab.progress import Reporter
from tunelab.train.batching import batch_order, collate
from tunelab.train.losses import masked_lm_loss

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class TrainResult:
    model: PeftModel
    curve: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step
    train_s: float = 0.0
    real_tokens: int = 0
    trained_tokens: int = 0
    trainable_params: int = 0
    total_params: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.train_s if self.train_s else 0.0


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier on the peak learning rate at optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)


def train_lora(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    records: list[Record],
    cfg: RunConfig,
    reporter: Reporter,
) -> TrainResult:
    import torch

    if not records:
        raise DataError("no training records", field="train")
    set_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    lc = cfg.lora
    with warnings.catch_warnings():  # peft calls a transformers API that warns about its own rename
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = _wrap(model, lc)
    encoded = [encode_chat(tok, r.messages) for r in records]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    oc = cfg.optimizer
    opt = torch.optim.AdamW(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
    steps = cfg.train.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, cfg.schedule.warmup_steps, cfg.schedule.kind)
    )
    base: Any = peft_model.get_base_model()
    decoder, lm_head = base.get_decoder(), base.get_output_embeddings()
    pad_id = int(tok.pad_token_id)

    result = TrainResult(
        model=peft_model,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in peft_model.parameters()),
    )
    reporter.event(
        "train_start",
        records=len(records),
        steps=steps,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
    )
    order = batch_order(len(encoded), cfg.batch.size, cfg.train.seed)
    peft_model.train()
    t0 = time.perf_counter()
    with reporter.progress("train", steps) as update:
        for step in range(steps):
            micro = [collate([encoded[i] for i in next(order)], pad_id) for _ in range(cfg.batch.grad_accum)]
            n_total = sum(int((b.labels[:, 1:] != -100).sum()) for b in micro)
            loss_sum = 0.0
            for b in micro:
                hidden = decoder(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
                loss, n = masked_lm_loss(hidden.last_hidden_state, lm_head, b.labels)
                (loss * (n / max(1, n_total))).backward()
                loss_sum += float(loss.detach()) * n
                result.real_tokens += b.real_tokens
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, oc.grad_clip))
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            result.trained_tokens += n_total
            elapsed = time.perf_counter() - t0
            row = {
                "step": step + 1,
                "loss": loss_sum / max(1, n_total),
                "lr": lr,
                "grad_norm": grad_norm,
                "real_tokens": result.real_tokens,
                "elapsed_s": round(elapsed, 3),
            }
            result.curve.append(row)
            reporter.event("train_step", **row)
            update(loss=row["loss"], lr=lr, tok_s=int(result.real_tokens / elapsed))
    result.train_s = time.perf_counter() - t0
    peft_model.eval()
    return result


def _wrap(model: PreTrainedModel, lc: LoraSection) -> PeftModel:
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=list(lc.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )


def save_adapter(peft_model: PeftModel, out: Path) -> None:
    """Write the PEFT adapter directory atomically (adapter_config.json + adapter_model.safetensors)."""
    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)


def trainable_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in peft_model.named_parameters() if v.requires_grad}
