"""`tunelab bench train`: tunelab's training engine vs Hugging Face `Trainer` + `peft`, side by side.

Same model (the bundled SmolLM2-135M-Instruct), same LoRA (r=16 on every attention and MLP projection),
same examples in the same order (bbc-topics chat records of mixed length, at most 512 tokens), same global
batch, same steps, same optimizer and schedule. Each side runs in its own fresh process so its peak RSS is
its own; the machine's fp32 matmul FLOP/s is measured in the same run for MFU. The two adapters are then
evaluated on the same held-out articles, paired, so speed is not bought with quality.

Trainer gets its default data handling for labelled chat data: `DataCollatorForSeq2Seq` padding each batch
to its longest example (labels padded with -100) and the model's own loss over full logits.

Precision is compared like with like. tunelab trains in bf16 where the hardware has bf16 matmuls (AVX512-BF16
or AMX CPUs, where they run ~8x faster than fp32); Trainer then runs with `bf16=True`, the flag its user
would set, and that is the peer of `speed_ratio`, `memory_ratio` and the quality test. Trainer exactly as a
new user runs it (no flag: fp32) is measured too, as `hf_trainer_default`. MFU divides by the measured
matmul peak of the precision the run used (`mfu`), and by the fp32 peak as well (`mfu_vs_fp32_peak`, the
issue's original yardstick, which a bf16 run can pass for no merit of its own).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json

TARGETS = {"speed_ratio_min": 2.0, "memory_ratio_max": 0.35, "mfu_min": 0.60}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def matmul_flops(threads: int, seconds: float = 3.0, dtype: str = "float32") -> float:
    """Best sustained matmul FLOP/s of this machine in `dtype` at the thread count training uses."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    dt = getattr(torch, dtype)
    for n in (1024, 2048):
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def flops_per_token(params: int, layers: int, hidden: int, context: float, factor: int) -> float:
    """factor·N (4 for LoRA: forward + activation gradients; 6 for full) plus the attention term scaled alike
    (PaLM's 12·L·d·T for factor 6), with T the mean context length a token sees in this data."""
    return factor * params + 2 * factor * layers * hidden * context


# --- the two sides, each run in its own process: `python -m tunelab.bench.train SIDE SPEC OUT` -------------


def _load(spec: dict[str, Any]) -> tuple[Any, Any, list[dict[str, Any]]]:
    from tunelab.models.loading import load_model, load_tokenizer

    path = Path(spec["model_path"])
    rows = [json.loads(x) for x in Path(spec["examples"]).read_text().splitlines()]
    return load_model(path), load_tokenizer(path), rows


def side_tunelab(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    from tunelab.config import RunConfig
    from tunelab.models.chat import Encoded
    from tunelab.progress import Reporter
    from tunelab.train.engine import save_model, train

    model, tok, rows = _load(spec)
    cfg = RunConfig()
    cfg.method.r, cfg.method.alpha, cfg.method.target_modules = 16, 32, LORA_TARGETS
    cfg.optimizer.lr = spec["lr"]
    cfg.schedule.kind, cfg.schedule.warmup_steps = "cosine", spec["warmup"]
    cfg.batch.size = spec["batch"]
    cfg.train.max_steps = spec["steps"]
    cfg.train.threads = spec["threads"]
    cfg.train.precision = "bf16" if spec["bf16"] else "fp32"
    examples = [Encoded(r["input_ids"], r["labels"]) for r in rows]
    # The examples arrive in step order: an identity plan keeps them there (same batches as Trainer).
    from tunelab.train import engine

    engine.StepPlan.indices = lambda self, step: list(  # type: ignore[method-assign]
        range(step * self.per_step, (step + 1) * self.per_step)
    )
    res = train(model, examples, cfg, Reporter(quiet=True), pad_id=int(tok.pad_token_id))
    save_model(res.model, out / "adapter")
    return {
        "train_s": res.train_s,
        "real_tokens": res.real_tokens,
        "losses": [r["loss"] for r in res.curve],
        "step_s": [b - a for a, b in itertools.pairwise([0.0] + [r["elapsed_s"] for r in res.curve])],
        "precision": res.precision,
        "attention": res.attention,
    }


def side_hf(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model, tok, rows = _load(spec)
    attn_impl = model.config._attn_implementation
    torch.set_num_threads(spec["threads"])
    model = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    )
    ds = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]  # a map-style dataset
    times: list[float] = []
    losses: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            times.append(time.perf_counter() - self.t)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = TrainingArguments(
        output_dir=str(out / "hf"),
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=1,
        max_steps=spec["steps"],
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=spec["warmup"],
        max_grad_norm=1.0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the same batches as tunelab's side
        seed=0,
        disable_tqdm=True,
        bf16=spec["bf16"],  # autocast, the model's weights fp32: what the flag does
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
        callbacks=[Clock()],
    )
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    model.save_pretrained(str(out / "adapter"))
    used = rows[: spec["steps"] * spec["batch"]]
    chunks = [used[i : i + spec["batch"]] for i in range(0, len(used), spec["batch"])]
    padded = sum(max(len(r["input_ids"]) for r in c) * len(c) for c in chunks)
    return {
        "train_s": train_s,
        "real_tokens": sum(len(r["input_ids"]) for r in used),
        "padded_tokens": padded,
        "losses": losses,
        "step_s": times,
        "precision": "bf16 autocast (bf16=True)" if spec["bf16"] else "fp32 (defaults)",
        "attention": f"transformers {attn_impl}, padded rows",
    }


def _side_main(side: str, spec_path: str, out: str) -> None:
    import resource

    spec = json.loads(Path(spec_path).read_text())
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    r = side_tunelab(spec, o) if side == "tunelab" else side_hf(spec, o)
    r["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    (o / "result.json").write_text(json.dumps(r))


# --- the orchestration ------------------------------------------------------------------------------------


def _run_side(side: str, spec: dict[str, Any], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab.bench.train", side, str(spec_path), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{side} side failed:\n{proc.stderr[-3000:]}")
    data: dict[str, Any] = json.loads((out / "result.json").read_text())
    return data


def bench_train(
    out: Path,
    steps: int = 24,
    batch: int = 8,
    eval_items: int = 100,
    quick: bool = False,
    precision: str = "auto",
    default_peer: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    import torch

    from tunelab.config import EvalSection
    from tunelab.data.audit import run_audit
    from tunelab.data.licence import DataPolicy
    from tunelab.data.tasks import BBC_LICENCE_ID, build_bbc_topics
    from tunelab.evaluate.classify import evaluate_classification
    from tunelab.evaluate.stats import compare_binary
    from tunelab.models.chat import encode_chat
    from tunelab.models.loading import load_model, load_tokenizer, resolve_model
    from tunelab.progress import Reporter
    from tunelab.train.engine import StepPlan, default_threads, uses_bf16

    if quick:
        steps, eval_items = min(steps, 4), min(eval_items, 20)
    out.mkdir(parents=True, exist_ok=True)
    threads = default_threads()
    resolved = resolve_model(None)
    tok = load_tokenizer(resolved.path)
    data = build_bbc_topics(out / "data", max_words=380)  # mixed lengths up to ~512 tokens
    audit = run_audit(
        [data.train],
        [data.eval],
        out / "audit",
        policy=DataPolicy(allowed_licences=[BBC_LICENCE_ID]),
        tokenizer=tok,
        max_length=512,
    )
    examples = [encode_chat(tok, r.messages) for r in audit.train]
    plan = StepPlan(len(examples), batch, seed=0)
    ordered = [examples[i] for s in range(steps) for i in plan.indices(s)]
    ex_path = out / "examples.jsonl"
    ex_path.write_text("".join(json.dumps({"input_ids": e.input_ids, "labels": e.labels}) + "\n" for e in ordered))
    lens = [len(e.input_ids) for e in ordered]
    bf16 = uses_bf16(precision, torch.device("cpu"))
    spec = {
        "model_path": str(resolved.path),
        "examples": str(ex_path),
        "steps": steps,
        "batch": batch,
        "lr": 5e-4,
        "warmup": 2,
        "threads": threads,
        "bf16": bf16,
    }
    log(f"{steps} steps x {batch} examples, lengths {min(lens)}-{max(lens)} tokens (mean {sum(lens) / len(lens):.0f})")
    log(f"precision: {'bf16 on both sides' if bf16 else 'fp32 on both sides'}")

    # side name -> (process kind, spec): the peer in the same precision, and Trainer as a new user runs it
    plan_sides: dict[str, tuple[str, dict[str, Any]]] = {"tunelab": ("tunelab", spec), "hf": ("hf", spec)}
    if bf16 and default_peer and not quick:
        plan_sides["hf_default"] = ("hf", {**spec, "bf16": False})
    sides: dict[str, dict[str, Any]] = {}
    for name, (kind, sp) in plan_sides.items():
        log(f"training: {name} ...")
        sides[name] = _run_side(kind, sp, out / name)
        s = sides[name]
        s["tokens_per_s"] = s["real_tokens"] / s["train_s"]
        log(f"  {s['tokens_per_s']:.0f} real tokens/s, peak RSS {s['peak_rss_gb']:.2f} GB ({s['precision']})")
        log(f"  attention: {s.get('attention', '?')}")

    peak32 = matmul_flops(threads)
    peak16 = matmul_flops(threads, dtype="bfloat16") if bf16 else None
    model = load_model(resolved.path)
    cfgm = model.config
    n_params = sum(p.numel() for p in model.parameters())
    context = sum(n * n for n in lens) / sum(lens)
    fpt = flops_per_token(n_params, cfgm.num_hidden_layers, cfgm.hidden_size, context, factor=4)
    for name, s in sides.items():
        own_peak = peak16 if plan_sides[name][1]["bf16"] else peak32
        s["mfu"] = s["tokens_per_s"] * fpt / (own_peak or peak32)
        s["mfu_vs_fp32_peak"] = s["tokens_per_s"] * fpt / peak32
        s["step_s_mean"] = sum(s["step_s"]) / max(1, len(s["step_s"]))

    # Quality: both adapters on the same held-out articles, paired.
    from peft import PeftModel

    task = data.task
    eval_all = next(iter(audit.eval.values()))
    stride = max(1, len(eval_all) // eval_items)
    eval_records = eval_all[::stride][:eval_items]
    quality: dict[str, Any] = {}
    correct: dict[str, list[bool]] = {}
    for side in sides:
        log(f"evaluating the {side} adapter on {len(eval_records)} held-out articles ...")
        tuned = PeftModel.from_pretrained(load_model(resolved.path), str(out / side / "adapter"))
        run = evaluate_classification(
            tuned, tok, task, eval_records, EvalSection(latency_samples=0, batch_size=8), Reporter(quiet=True), side
        )
        quality[f"{side}_accuracy"] = run.metrics.accuracy
        correct[side] = [p["correct"] for p in run.predictions]
    comp = compare_binary("accuracy", correct["hf"], correct["tunelab"], resamples=10_000, seed=0)
    if "hf_default" in correct:
        d = compare_binary("accuracy", correct["hf_default"], correct["tunelab"], resamples=10_000, seed=0)
        quality["vs_hf_default"] = {"delta": d.delta, "p_value": d.p_value, "ci95": list(d.ci95)}
    quality.update(
        {
            "items": len(eval_records),
            "delta": comp.delta,
            "p_value": comp.p_value,
            "ci95": list(comp.ci95),
            "same_within_noise": comp.p_value >= 0.05,
        }
    )
    t, h = sides["tunelab"], sides["hf"]
    result = {
        "bench": "train",
        "quick": quick,
        "machine": {
            "cpus": os.cpu_count(),
            "threads": threads,
            "processor": platform.processor() or "",
            "torch": torch.__version__,
        },
        "setup": {
            "model": resolved.base_model_id,
            "method": "LoRA r=16 alpha=32 on " + ",".join(LORA_TARGETS),
            "steps": steps,
            "global_batch": batch,
            "max_length": 512,
            "examples_tokens": {"min": min(lens), "max": max(lens), "mean": sum(lens) / len(lens)},
            "mean_context": context,
            "params": n_params,
            "flops_per_token": fpt,
            "precision": "bf16" if bf16 else "fp32",
            "matmul_flops": peak16 or peak32,
            "matmul_flops_fp32": peak32,
            "matmul_flops_bf16": peak16,
        },
        "speed_ratio": t["tokens_per_s"] / h["tokens_per_s"],
        "memory_ratio": t["peak_rss_gb"] / h["peak_rss_gb"],
        "mfu": t["mfu"],
        "mfu_vs_fp32_peak": t["mfu_vs_fp32_peak"],
        "hf_mfu": h["mfu"],
        "tunelab": t,
        "hf_trainer": h,
        "quality": quality,
        "targets": TARGETS,
    }
    if "hf_default" in sides:
        hd = sides["hf_default"]
        result["hf_trainer_default"] = hd
        result["speed_ratio_vs_default"] = t["tokens_per_s"] / hd["tokens_per_s"]
        result["memory_ratio_vs_default"] = t["peak_rss_gb"] / hd["peak_rss_gb"]
    result["met"] = {
        "speed_ratio": result["speed_ratio"] >= TARGETS["speed_ratio_min"],
        "memory_ratio": result["memory_ratio"] <= TARGETS["memory_ratio_max"],
        "mfu": result["mfu"] >= TARGETS["mfu_min"],
        "quality": quality["same_within_noise"],
    }
    atomic_write_json(out / "bench-train.json", result)
    return result


if __name__ == "__main__":
    _side_main(*sys.argv[1:4])
