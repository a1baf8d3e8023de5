"""The training recipe, top to bottom: wrap → plan → (resume) → loop → checkpoints. One function, no class
hierarchy; each piece it calls (packing, attention, loss, checkpoint, distributed) is a small module.

- Methods: a LoRA adapter (`peft`) or full fine-tuning; loss on assistant tokens only.
- Each optimizer step takes a fixed, seeded set of examples (`StepPlan`: a pure function of the step,
  so the data position after a resume is just the step number). With several processes each takes its
  share of the same global batch and DDP averages the gradients; the loss is normalised by the global
  count of trained tokens, so 1 and N processes compute the same update.
- A step's examples are packed into rows of at most `batch.max_tokens` tokens (no padding, attention kept
  inside each example) and the loss is taken through the chunked cross-entropy on trained positions only.
- Checkpoints (trainable weights, optimizer, scheduler, RNG, counters, curve) are atomic; `resume=True`
  continues from the newest one that verifies, and the result equals an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import MethodSection, RunConfig
from tunelab.errors import ConfigError, DataError
from tunelab.fsutil import atomic_dir, atomic_write_jsonl
from tunelab.models.chat import IGNORE, Encoded
from tunelab.progress import Reporter
from tunelab.train import checkpoint as ckpt
from tunelab.train.attention import attention_backend, packed_attention, supports_packing
from tunelab.train.distributed import Dist
from tunelab.train.fused import fused_lora
from tunelab.train.losses import lm_loss_sum
from tunelab.train.packing import micro_batches, pack, shifted_weights, trained_count, trained_weight

if TYPE_CHECKING:
    import torch


# bf16 on a CPU: packed spans padded to a multiple of 32 tokens and rows to 128 (`pack`): ~3% more tokens
# computed, in exchange for kernels that oneDNN builds once and reuses.
ROUND_SPAN, ROUND_ROW = 32, 128


@dataclass
class TrainResult:
    model: Any  # the PeftModel (LoRA) or the model itself (full)
    curve: list[dict[str, Any]] = field(default_factory=list)  # one row per optimizer step
    train_s: float = 0.0
    real_tokens: int = 0  # tokens forwarded, none of them padding when packing
    trained_tokens: int = 0
    trainable_params: int = 0
    total_params: int = 0
    resumed_from: int | None = None
    skipped_checkpoints: list[str] = field(default_factory=list)
    peak_rss_gb: float = 0.0
    precision: str = "fp32"
    attention: str = ""  # what attention ran on (packed rows: tunelab's bf16 kernel or PyTorch's SDPA)

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


class StepPlan:
    """Examples of optimizer step s: position s*per_step onwards in a stream of seeded shuffled epochs."""

    def __init__(self, n: int, per_step: int, seed: int):
        self.n, self.per_step, self.seed = n, per_step, seed
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            p = list(range(self.n))
            random.Random(f"{self.seed}:{epoch}").shuffle(p)
            self._perms = {epoch: p}  # steps move forward: keep one epoch
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.per_step
        return [self._perm(q // self.n)[q % self.n] for q in range(start, start + self.per_step)]


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_threads(local_world: int = 1) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))


def bf16_available(device: torch.device) -> bool:
    """bf16 matmuls in hardware: CUDA with bf16 support, or a CPU with AVX512-BF16 / AMX."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    from tunelab.hardware import cpu_bf16

    return cpu_bf16()


@contextmanager
def frozen_in_bf16(model: Any) -> Iterator[int]:
    """Within the block, the model's frozen fp32 weights are held in bf16; the fp32 tensors come back after.

    Under bf16 autocast every matmul casts its fp32 weight to bf16 again at each call (autocast caches only
    weights that train), so a LoRA step spent about a fifth of its time copying the frozen model. Held in
    bf16, the frozen weights are cast once; the adapter and its optimizer state stay fp32, and the frozen
    model is left exactly as it was for evaluation and serving. Yields how many tensors were swapped.
    """
    import torch

    saved = []
    for p in model.parameters():
        if not p.requires_grad and p.dtype == torch.float32:
            saved.append((p, p.data))
            p.data = p.data.to(torch.bfloat16)
    try:
        yield len(saved)
    finally:
        for p, data in saved:
            p.data = data


def uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether `train.precision` (auto | fp32 | bf16) means bf16 on this device."""
    return precision == "bf16" or (precision == "auto" and bf16_available(device))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def wrap(model: Any, mc: MethodSection) -> Any:
    if mc.kind == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers API that warns about its own rename
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(
            model,
            LoraConfig(
                r=mc.r,
                lora_alpha=mc.alpha,
                lora_dropout=mc.dropout,
                target_modules=list(mc.target_modules),
                bias="none",
                task_type="CAUSAL_LM",
            ),
        )


def _compile_layers(model: Any) -> None:
    """torch.compile each decoder layer (one graph reused by all layers; shapes dynamic). Inductor fuses the
    elementwise work (norms, rotary, SiLU, LoRA adds) and recomputes cheap values in backward instead of
    keeping them, so steps are faster and activations smaller, after a one-off compile (~10-60 s on a CPU)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ConfigError("train.compile: this model has no decoder layer list to compile", field="train.compile")
    for layer in layers:
        layer.compile(dynamic=True)


def _inner(model: Any) -> Any:
    """The transformers model under a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _seq_logps(decoder: Any, lm_head: Any, batch: dict[str, Any], packing: bool) -> torch.Tensor:
    """Summed log-probability of each sequence's trained tokens: [number of sequences]."""
    import torch
    import torch.nn.functional as F

    hidden = _hidden(decoder, batch, packing)
    targets = batch["targets"]
    keep = targets != IGNORE
    logp = -F.cross_entropy(lm_head(hidden[keep]).float(), targets[keep], reduction="none")
    out = torch.zeros(batch["n_seqs"], dtype=logp.dtype, device=logp.device)
    return out.index_add(0, batch["seq_ids"][keep], logp)


def _hidden(decoder: Any, batch: dict[str, Any], packing: bool) -> torch.Tensor:
    if packing:
        out = decoder(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            cu_seqlens_tunelab=batch["cu_seqlens"],
            use_cache=False,
        )
    else:
        out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    hidden: torch.Tensor = out.last_hidden_state
    return hidden


def _step_module(model: Any, packing: bool, dpo_beta: float | None = None, reference: Any = None) -> Any:
    """forward(batch) → summed loss of the batch's units (SFT: trained tokens; DPO: pairs). DDP wraps it.

    DPO compares the policy with a frozen reference: the same model with its LoRA adapter switched off,
    or (full fine-tuning) a frozen copy of the starting weights.
    """
    import torch
    import torch.nn.functional as F

    base = _inner(model)
    decoder, lm_head = base.get_decoder(), base.get_output_embeddings()

    class CausalLMLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # registers every parameter, so DDP sees the trainable ones
            self.stats = {"correct": 0.0, "margin": 0.0}

        def forward(self, batch: dict[str, Any]) -> torch.Tensor:
            if dpo_beta is None:
                loss, _ = lm_loss_sum(_hidden(decoder, batch, packing), lm_head, batch["targets"], batch.get("weights"))
                return loss
            with torch.no_grad():
                if reference is None:
                    with model.disable_adapter():
                        ref = _seq_logps(decoder, lm_head, batch, packing)
                else:
                    rb = _inner(reference)
                    ref = _seq_logps(rb.get_decoder(), rb.get_output_embeddings(), batch, packing)
            pol = _seq_logps(decoder, lm_head, batch, packing)
            margin = (pol[0::2] - ref[0::2]) - (pol[1::2] - ref[1::2])  # chosen minus rejected rewards / beta
            self.stats["correct"] += float((margin > 0).sum())
            self.stats["margin"] += float(dpo_beta * margin.detach().sum())
            return -F.logsigmoid(dpo_beta * margin).sum()

    return CausalLMLoss()


def _batch(
    examples: list[Encoded], packing: bool, pad_id: int, device: torch.device, round_to: tuple[int, int] = (1, 1)
) -> tuple[dict[str, Any], int]:
    """Model inputs for one forward pass and the number of real (non-pad) tokens in it. `round_to`: the
    packed spans' and row's length multiples (see `pack`)."""
    import torch

    if packing:
        p = pack(examples, *round_to, pad_id=pad_id)
        b = {
            "input_ids": p.input_ids.to(device),
            "position_ids": p.position_ids.to(device),
            "targets": p.targets.to(device),
            "cu_seqlens": torch.tensor(p.cu_seqlens),
            "seq_ids": p.seq_ids.to(device),
            "n_seqs": len(examples),
        }
        if p.weights is not None:
            b["weights"] = p.weights.to(device)
        return b, p.tokens
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    tgt = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    wts = torch.zeros((len(examples), width)) if any(e.weights is not None for e in examples) else None
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        tgt[i, : n - 1] = torch.tensor(e.labels[1:])
        if wts is not None:
            wts[i, :n] = torch.tensor(shifted_weights(e))
    seq_ids = torch.arange(len(examples))[:, None].expand(len(examples), width)
    b = {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "targets": tgt.to(device),
        "seq_ids": seq_ids.to(device),
        "n_seqs": len(examples),
    }
    if wts is not None:
        b["weights"] = wts.to(device)
    return b, int(mask.sum())


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state: Any = np.random.get_state()
    py = random.getstate()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def record_step(row: dict[str, Any], curve: list[dict[str, Any]], curve_f: Any, reporter: Reporter) -> None:
    """One optimizer step's row: kept in memory, appended to train/curve.jsonl (flushed), and sent as an event."""
    curve.append(row)
    if curve_f:
        curve_f.write(json.dumps(row) + "\n")
        curve_f.flush()
    reporter.event("train_step", **row)


def save_checkpoint(
    ckpt_root: Path | None, step: int, dist: Dist, reporter: Reporter, named: list[tuple[str, Any]], opt: Any,
    sched: Any, counters: dict[str, Any], keep_last: int, adapter: Callable[[Path], None] | None = None,
) -> None:
    """Every process's RNG state gathered; process 0 writes the checkpoint atomically: trainable tensors,
    optimizer, scheduler, RNGs, state.json (step, processes and `counters`), and `adapter(dir)` if given.
    The counterpart of `restore_latest`; shared by the text and image training loops."""
    import torch
    from safetensors.torch import save_file

    rngs = dist.gather(rng_state())
    if not (dist.main and ckpt_root):
        return

    def write(tmp: Path) -> None:
        save_file({k: p.detach().cpu().contiguous() for k, p in named}, str(tmp / "weights.safetensors"))
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        (tmp / "rng.json").write_text(json.dumps(rngs))
        (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": dist.world, **counters}))
        if adapter is not None:
            adapter(tmp / "adapter")

    path = ckpt.save(ckpt_root, step, write, keep_last)
    reporter.event("checkpoint", step=step, path=str(path))


def begin(
    run_dir: Path | None, resume: bool, dist: Dist, reporter: Reporter, named: list[tuple[str, Any]], opt: Any,
    sched: Any, skipped: list[str], steps: int,
) -> dict[str, Any] | None:
    """The start of a training loop: with `resume`, the newest good checkpoint restored and the loss curve
    rewritten up to it (its state returned); else an empty curve (None returned)."""
    curve_path = run_dir / "train" / "curve.jsonl" if run_dir else None
    if not resume:
        if dist.main and curve_path:
            atomic_write_jsonl(curve_path, [])
        return None
    if run_dir is None:
        raise ConfigError("resuming needs a run directory", field="--resume")
    state = restore_latest(run_dir / "checkpoints", dist, reporter, named, opt, sched, skipped)
    if curve_path and dist.main:
        atomic_write_jsonl(curve_path, state["curve"])
    reporter.info(f"resumed from {state['path'].name} (step {state['step']} of {steps})")
    return state


def restore_latest(
    ckpt_root: Path, dist: Dist, reporter: Reporter, named: list[tuple[str, Any]], opt: Any, sched: Any,
    skipped: list[str],
) -> dict[str, Any]:
    """Load the newest checkpoint that verifies into the trainable tensors, optimizer, scheduler and RNGs.

    Damaged newer checkpoints are reported and appended to `skipped`; returns the checkpoint's state.json
    (with `path` added). Shared by the text and image training loops.
    """
    import torch
    from safetensors.torch import load_file

    found = ckpt.latest_good(ckpt_root)
    for path, why in found.skipped if found else []:
        reporter.info(f"[yellow]checkpoint {path.name} is damaged ({why}); using an older one[/]")
        skipped.append(f"{path.name}: {why}")
    if found is None:
        bad = "; ".join(f"{p.name}: {ckpt.verify(p)}" for _, p in ckpt.listing(ckpt_root))
        raise ConfigError(f"no usable checkpoint to resume from{': ' + bad if bad else ''}", file=ckpt_root)
    state = ckpt.read_state(found.path)
    if state["world_size"] != dist.world:
        raise ConfigError(
            f"checkpoint was written by {state['world_size']} processes, this run has {dist.world}",
            file=found.path,
        )
    weights = load_file(str(found.path / "weights.safetensors"))
    with torch.no_grad():
        for k, p in named:
            p.copy_(weights[k])
    opt.load_state_dict(torch.load(found.path / "optimizer.pt", weights_only=True))
    sched.load_state_dict(torch.load(found.path / "scheduler.pt", weights_only=True))
    set_rng_state(json.loads((found.path / "rng.json").read_text())[dist.rank])
    return {**state, "path": found.path}


Pair = tuple[Encoded, Encoded]  # DPO: (prompt + chosen, prompt + rejected)


def _flat(units: list[Any], dpo: bool) -> list[Encoded]:
    return [e for u in units for e in u] if dpo else list(units)


def _size(unit: Any) -> int:
    return sum(len(e.input_ids) for e in unit) if isinstance(unit, tuple) else len(unit.input_ids)


def train(
    model: Any,
    examples: list[Encoded] | list[Pair],
    cfg: RunConfig,
    reporter: Reporter,
    *,
    pad_id: int = 0,
    run_dir: Path | None = None,
    resume: bool = False,
    dist: Dist | None = None,
) -> TrainResult:
    import copy

    import torch

    dist = dist or Dist()
    dpo = cfg.method.objective == "dpo"
    if examples and dpo != isinstance(examples[0], tuple):
        raise ConfigError("DPO trains on (chosen, rejected) pairs; SFT on examples", field="method.objective")
    if not examples:
        raise DataError("no training examples", field="train")
    if cfg.batch.size * cfg.batch.grad_accum < dist.world:
        raise ConfigError(
            f"global batch {cfg.batch.size * cfg.batch.grad_accum} is smaller than {dist.world} processes",
            field="batch.size",
        )
    packing = cfg.batch.packing and supports_packing(_inner(model))
    if cfg.batch.packing and not packing:
        reporter.info("this model's attention cannot run packed; training on padded rows")
    torch.set_num_threads(cfg.train.threads or default_threads(dist.local_world))
    device = torch.device("cuda", dist.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    seed_everything(cfg.train.seed)  # the same on every process: the same adapter initialisation
    reference = None
    if dpo and cfg.method.kind == "full":  # LoRA's reference is the same model with the adapter off
        reference = copy.deepcopy(model).requires_grad_(False).eval().to(device)
    model = wrap(model, cfg.method).to(device)
    if cfg.train.gradient_checkpointing:
        _inner(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.compile:
        _compile_layers(_inner(model))
    params = [p for p in model.parameters() if p.requires_grad]
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    oc = cfg.optimizer
    # fused: one kernel per tensor instead of ~10 (on a CPU the default is the per-op loop): for the bench's 420
    # LoRA tensors 5 ms a step against 27; for full fine-tuning a few passes over the weights instead of ~10
    fused = device.type in ("cpu", "cuda") and all(p.dtype in (torch.float32, torch.bfloat16) for p in params)
    opt = torch.optim.AdamW(
        params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay, **({"fused": True} if fused else {})
    )
    steps = cfg.train.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, cfg.schedule.warmup_steps, cfg.schedule.kind)
    )
    use_bf16 = uses_bf16(cfg.train.precision, device)
    frozen16 = use_bf16 and cfg.method.kind == "lora"  # full fine-tuning keeps fp32 master weights
    round_to = (ROUND_SPAN, ROUND_ROW) if use_bf16 and device.type == "cpu" else (1, 1)  # few shapes for oneDNN
    result = TrainResult(
        model=model,
        trainable_params=sum(p.numel() for p in params),
        total_params=sum(p.numel() for p in model.parameters()),
        precision=("bf16 autocast, frozen weights in bf16" if frozen16 else "bf16 autocast") if use_bf16 else "fp32",
        attention=(
            attention_backend()
            if packing and use_bf16 and device.type == "cpu"
            else "PyTorch scaled_dot_product_attention per example"
            if packing
            else f"the model's own ({_inner(model).config._attn_implementation}, padded rows)"
        ),
    )
    per_step = cfg.batch.size * cfg.batch.grad_accum
    plan = StepPlan(len(examples), per_step, cfg.train.seed)
    ckpt_root = run_dir / "checkpoints" if run_dir else None
    curve_path = run_dir / "train" / "curve.jsonl" if run_dir else None

    start = 0
    state = begin(run_dir, resume, dist, reporter, named, opt, sched, result.skipped_checkpoints, steps)
    if state is not None:
        start = result.resumed_from = state["step"]
        result.curve = state["curve"]
        result.real_tokens, result.trained_tokens = state["real_tokens"], state["trained_tokens"]
        result.train_s = state["train_s"]

    step_module = _step_module(model, packing, cfg.method.beta if dpo else None, reference)
    runner: Any = step_module
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        runner = DistributedDataParallel(step_module, device_ids=[dist.local_rank] if device.type == "cuda" else None)

    reporter.event(
        "train_start",
        examples=len(examples),
        steps=steps,
        start_step=start,
        method=cfg.method.kind,
        packing=packing,
        processes=dist.world,
        precision=result.precision,
        attention=result.attention,
        trainable_params=result.trainable_params,
        total_params=result.total_params,
    )

    def write_checkpoint(step: int) -> None:
        counters = {"real_tokens": result.real_tokens, "trained_tokens": result.trained_tokens,
                    "train_s": result.train_s, "curve": result.curve}  # fmt: skip
        # a PEFT adapter dir beside the state: each checkpoint is servable
        adapter = (lambda d: _write_adapter(model, d)) if hasattr(model, "peft_config") else None
        save_checkpoint(ckpt_root, step, dist, reporter, named, opt, sched, counters, cfg.checkpoint.keep_last, adapter)

    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    model.train()
    curve_f = open(curve_path, "a", encoding="utf-8") if (curve_path and dist.main) else None  # noqa: SIM115
    t_resume = time.perf_counter()
    base_s = result.train_s
    try:
        with ExitStack() as stack:
            if frozen16:
                stack.enter_context(frozen_in_bf16(model))
            # (full DPO's frozen reference stays as the policy is, fp32 under autocast: held in bf16 its
            # log-probabilities would differ from the starting policy's, and DPO's margins would not start at 0)
            if cfg.train.fused_lora:
                stack.enter_context(fused_lora(model))
            if packing:
                stack.enter_context(packed_attention(_inner(model)))
                if reference is not None:
                    stack.enter_context(packed_attention(_inner(reference)))
            update = stack.enter_context(reporter.progress("train", steps))
            update(advance=start)
            for step in range(start, steps):
                chosen = [examples[i] for i in plan.indices(step)]
                # Loss normaliser, known to every process: trained tokens (SFT; their weights, where an example
                # sets them) or pairs (DPO).
                n_total = len(chosen) if dpo else sum(trained_weight(e) for e in _flat(chosen, False))
                n_total = n_total if n_total > 0 else 1
                mine = chosen[dist.rank :: dist.world]
                groups = micro_batches(mine, cfg.batch.max_tokens, _size)
                loss_sum = 0.0
                real_tokens = 0
                step_module.stats = {"correct": 0.0, "margin": 0.0}
                for j, group in enumerate(groups):
                    batch, real = _batch(_flat(group, dpo), packing, pad_id, device, round_to)
                    sync = j == len(groups) - 1 or not dist.enabled
                    with nullcontext() if sync else runner.no_sync(), autocast:
                        loss = runner(batch)
                    (loss * (dist.world / n_total)).backward()
                    loss_sum += float(loss.detach())
                    real_tokens += real
                loss_sum = dist.all_sum(loss_sum)
                result.real_tokens += int(dist.all_sum(real_tokens))
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, oc.grad_clip))
                lr = sched.get_last_lr()[0]
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                result.trained_tokens += sum(trained_count(e) for e in _flat(chosen, dpo))
                result.train_s = base_s + time.perf_counter() - t_resume
                row = {
                    "step": step + 1,
                    "loss": loss_sum / n_total,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "real_tokens": result.real_tokens,
                    "elapsed_s": round(result.train_s, 3),
                }
                if dpo:
                    row["reward_accuracy"] = dist.all_sum(step_module.stats["correct"]) / n_total
                    row["reward_margin"] = dist.all_sum(step_module.stats["margin"]) / n_total
                record_step(row, result.curve, curve_f, reporter)
                update(loss=row["loss"], lr=lr, tok_s=int(result.real_tokens / max(1e-9, result.train_s)))
                if cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0 and step + 1 < steps:
                    write_checkpoint(step + 1)
    finally:
        if curve_f:
            curve_f.close()
    model.eval()
    result.peak_rss_gb = peak_rss_gb()
    return result


def evaluate_loss(model: Any, examples: list[Encoded], max_tokens: int) -> float:
    """Mean cross-entropy per trained token on held-out examples (packed, no gradients)."""
    import torch

    inner = _inner(model)
    packing = supports_packing(inner)
    step_module = _step_module(model, packing)
    device = next(model.parameters()).device
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad(), packed_attention(inner) if packing else nullcontext():
        for group in micro_batches(examples, max_tokens):
            batch, _ = _batch(group, packing, 0, device)
            total += float(step_module(batch))
            n += sum(trained_count(e) for e in group)
    return total / max(1, n)


def _write_adapter(model: Any, out: Path) -> None:
    """The adapter's weights and config as `save_pretrained` writes them (without its model card)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model)
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / "adapter_model.safetensors"))
    model.peft_config["default"].save_pretrained(str(out))


def save_model(model: Any, out: Path, tokenizer: Any = None) -> None:
    """Atomically write `out/`: a PEFT adapter dir for LoRA, a full safetensors checkpoint otherwise."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer is not None and not hasattr(model, "get_base_model"):
            tokenizer.save_pretrained(str(tmp))


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
