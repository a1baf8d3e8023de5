"""`tunelab bench ...`: benchmarks that measure the issues' targets and write JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.app import app

bench_app = typer.Typer(help="Benchmarks that measure the issues' targets and write JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("quickstart")
def bench_quickstart(
    out: Annotated[Path, typer.Option(help="Where the run and bench-quickstart.json go.")] = Path("runs/bench"),
    max_steps: Annotated[int | None, typer.Option(help="Training steps (default: the quickstart's).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run the whole quickstart; report wall time and accuracy against the targets (10 min, >= 0.85, p < 0.01)."""
    import json

    from tunelab.bench.quickstart import bench_quickstart as run_bench
    from tunelab.paths import new_run_dir

    r = run_bench(new_run_dir("quickstart", out), max_steps)
    if json_:
        print(json.dumps(r, indent=2))
        return
    met = ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in r["met"].items())
    print(
        f"quickstart: {r['total_s']:.0f} s (target <= {r['targets']['total_s_max']:.0f} s), accuracy "
        f"{r['base_accuracy']:.3f} -> {r['tuned_accuracy']:.3f} (target >= 0.85), p = {r['p_value']:.2g}; "
        f"tuned accuracy x{r['tuned_accuracy_vs_reference']:.2f} of the issue's reference in "
        f"x{r['steps_vs_reference']:.2f} its steps; {met}"
    )


@bench_app.command("data")
def bench_data(
    out: Annotated[Path, typer.Option(help="Where the synthetic data, audit and bench-data.json go.")] = Path(
        "runs/bench-data"
    ),
    records: Annotated[int, typer.Option(min=1000, help="Synthetic training records.")] = 100_000,
    peer: Annotated[bool, typer.Option(help="Also time datasketch and our near-dup stage alone.")] = True,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Audit speed, near-dup speed vs datasketch (same run), near-dup and PII precision/recall, peak RSS."""
    import json

    from tunelab.bench.data import bench_data as run_bench

    r = run_bench(out, records, peer=peer)
    if json_:
        print(json.dumps(r, indent=2))
        return
    if not peer:
        print(f"audit {r['records_per_s']:,.0f} records/s, peak RSS of the audit {r['peak_rss_gb']:.2f} GB")
        return
    print(
        f"audit {r['records_per_s']:,.0f} records/s (target >= 10,000); near-dup stage x{r['near_dup_speedup']:.1f} "
        f"vs datasketch ({r['tunelab_near_dup']['records_per_s']:,.0f} vs "
        f"{r['datasketch_near_dup']['records_per_s']:,.0f} records/s, target x3); "
        f"near-dup P {r['near_dup_precision']:.3f} R {r['near_dup_recall']:.3f}; "
        f"PII P {r['pii_precision']:.3f} R {r['pii_recall']:.3f}; "
        f"peak RSS {r['peak_rss_gb']:.2f} GB; met: {', '.join(k for k, v in r['met'].items() if v) or 'none'}"
    )


@bench_app.command("train")
def bench_train(
    out: Annotated[Path, typer.Option(help="Where both runs and bench-train.json go.")] = Path("runs/bench-train"),
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps on each side.")] = 24,
    eval_items: Annotated[int, typer.Option(min=10, help="Held-out articles both adapters are scored on.")] = 100,
    quick: Annotated[bool, typer.Option(help="4 steps, 20 eval items: checks it runs, not the figures.")] = False,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where the hardware has it) | fp32 | bf16, the same on both sides.")
    ] = "auto",
    default_peer: Annotated[
        bool, typer.Option(help="With bf16, also time Trainer with its defaults (fp32), as a new user runs it.")
    ] = True,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """tunelab's engine vs HF Trainer + peft, same data/steps/batch/precision: tokens/s, RSS, MFU, accuracy."""
    import json

    from tunelab.bench.train import bench_train as run_bench
    from tunelab.errors import ConfigError

    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError("must be auto, fp32 or bf16", field="--precision")
    r = run_bench(
        out,
        steps=steps,
        eval_items=eval_items,
        quick=quick,
        precision=precision,
        default_peer=default_peer,
        log=(lambda m: None) if json_ else print,
    )
    if json_:
        print(json.dumps(r, indent=2))
        return
    t, h, q = r["tunelab"], r["hf_trainer"], r["quality"]
    print(
        f"tunelab {t['tokens_per_s']:.0f} vs Trainer {h['tokens_per_s']:.0f} real tokens/s: "
        f"speed x{r['speed_ratio']:.2f} (target >= 2.0); peak RSS {t['peak_rss_gb']:.2f} vs {h['peak_rss_gb']:.2f} GB: "
        f"memory x{r['memory_ratio']:.2f} (target <= 0.35); MFU {r['mfu']:.2f} vs {r['hf_mfu']:.2f} (target >= 0.60); "
        f"accuracy {q['tunelab_accuracy']:.3f} vs {q['hf_accuracy']:.3f} (paired p = {q['p_value']:.2g}); "
        f"met: {', '.join(k for k, v in r['met'].items() if v) or 'none'} [{r['setup']['precision']} on both sides]"
    )
    if "hf_trainer_default" in r:
        d = r["hf_trainer_default"]
        print(
            f"Trainer with its defaults (fp32): {d['tokens_per_s']:.0f} real tokens/s, "
            f"peak RSS {d['peak_rss_gb']:.2f} GB -> speed x{r['speed_ratio_vs_default']:.2f}, "
            f"memory x{r['memory_ratio_vs_default']:.2f}; "
            f"MFU against the fp32 peak {r['mfu_vs_fp32_peak']:.2f}"
        )
    print(f"details: {out / 'bench-train.json'}")


@bench_app.command("eval")
def bench_eval(
    out: Annotated[Path, typer.Option(help="Where the items, both runs and bench-eval.json go.")] = Path(
        "runs/bench-eval"
    ),
    items: Annotated[int, typer.Option(min=5, help="Multiple-choice items (5 topics x items/5).")] = 200,
    model: Annotated[str | None, typer.Option(help="Local model dir (default: bundled).")] = None,
    quick: Annotated[bool, typer.Option(help="20 items: checks it runs, not the figures.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """tunelab's multiple-choice scoring vs lm-eval on the same local items and model: agreement and speed."""
    import json

    from tunelab.bench.eval import bench_eval as run_bench

    r = run_bench(out, model=model, items=20 if quick else items, log=(lambda m: None) if json_ else print)
    if json_:
        print(json.dumps(r, indent=2))
        return
    t, lm = r["tunelab"], r["lm_eval"]
    print(
        f"accuracy {t['accuracy']:.3f} vs lm-eval {lm['accuracy']:.3f}: |diff| {r['agreement_abs_diff']:.3f} "
        f"(target <= 0.01), same answer on {r['item_agreement']:.1%} of items; wall {t['wall_s']:.1f} s vs "
        f"{lm['wall_s']:.1f} s: speed x{r['speed_ratio']:.2f} (target >= 3); peak RSS {t['peak_rss_gb']:.2f} vs "
        f"{lm['peak_rss_gb']:.2f} GB; met: {', '.join(k for k, v in r['met'].items() if v) or 'none'}"
    )
    print(f"details: {out / 'bench-eval.json'}")


@bench_app.command("guard")
def bench_guard(
    out: Annotated[Path, typer.Option(help="Where bench-guard.json goes.")] = Path("runs/bench-guard"),
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The learned injection guard vs the first guard (rules + n-gram) and the rules alone on held-out sources:
    TPR at FPR <= 2%, on indirect injections, hard negatives' FPR, calibration, and p99 ms for 512 tokens."""
    import json

    from tunelab.bench.guard import bench_guard as run_bench

    r = run_bench(out)
    if json_:
        print(json.dumps(r, indent=2))
        return
    c = r["corpus"]
    if not c["same_as_guard"]:
        print(f"note: this corpus (sha256 {c['sha256'][:12]}) is not the one the guard was trained on "
              f"({str(c['guard_trained_on'])[:12]}); README carriers missing or at other versions: "
              f"{', '.join(c['missing_carriers']) or 'none'} (install with -c constraints.txt)")
    t = r["test_split"]
    print(f"held-out test split: {t['n']} texts, {t['attacks']} attacks ({t['indirect']} indirect), "
          f"{t['hard_negatives']} hard negatives")  # fmt: skip
    print(f"{'guard':>16} {'TPR@FPR2%':>10} {'indirect':>9} {'hard-neg FPR':>13} {'TPR/FPR at its threshold':>26}")
    for k, g in r["guards"].items():
        s = g["at_serving_threshold"]
        print(f"{k:>16} {g['tpr_at_fpr2']:>10.3f} {g['indirect_tpr_at_fpr2']:>9.3f} {g['hard_negative_fpr']:>13.3f} "
              f"{s['tpr']:>12.3f} / {s['fpr']:.3f}")  # fmt: skip
    lat = r["latency_ms_512_tokens"]
    print(f"learned guard, one 512-token text: {lat['mean']:.1f} ms mean, {lat['p99']:.1f} ms p99 ({lat['dtype']})")
    print(f"calibration: ECE {r['ece_learned']:.3f} over {len(r['reliability_learned'])} bins")
    for k, ok in r["met"].items():
        print(f"  {k} {r['goals'][k]}: {r[k]:.3f} {'met' if ok else 'NOT met'}")
    pd = r["public_detector"]
    print("public detector: " + ("; ".join(pd.get("installed", [])) if pd["available"] else f"none ({pd['why']})"))
    print(f"details: {out / 'bench-guard.json'}")


@bench_app.command("serve")
def bench_serve(
    out: Annotated[Path, typer.Option(help="Where the logs and bench-serve.json go.")] = Path("runs/bench-serve"),
    model: Annotated[str | None, typer.Option(help="Local model dir (default: bundled).")] = None,
    clients: Annotated[int, typer.Option(min=1)] = 8,
    requests: Annotated[int, typer.Option(min=1, help="Requests per client.")] = 16,
    quick: Annotated[bool, typer.Option(help="4 clients x 2 requests: checks it runs, not the figures.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """tunelab serve vs a one-request-at-a-time transformers.generate server: aggregate and single-stream tokens/s."""
    import json

    from tunelab.bench.serve import bench_serve as run_bench

    r = run_bench(
        out,
        model=model,
        clients=4 if quick else clients,
        per_client=2 if quick else requests,
        single=2 if quick else 4,
        log=(lambda m: None) if json_ else print,
    )
    if json_:
        print(json.dumps(r, indent=2))
        return
    p = r["plain"]
    print(f"default weights on this machine: {r['setup']['default_weights']}")
    for weights, ratio in r["ratios"].items():
        t = r[ratio["side"]]
        print(
            f"{ratio['side']} ({weights}): under load {t['concurrent']['output_tokens_per_s']:.1f} vs plain "
            f"{p['concurrent']['output_tokens_per_s']:.1f} tokens/s: x{ratio['throughput']:.2f} (target >= 8); "
            f"alone {t['single']['output_tokens_per_s']:.1f} vs {p['single']['output_tokens_per_s']:.1f}: "
            f"x{ratio['single_stream']:.2f} (target >= 2); p50/p95 latency "
            f"{t['concurrent']['latency_p50_s']:.1f}/{t['concurrent']['latency_p95_s']:.1f} s vs "
            f"{p['concurrent']['latency_p50_s']:.1f}/{p['concurrent']['latency_p95_s']:.1f} s; TTFT p50 "
            f"{t['concurrent']['ttft_p50_s']:.2f} vs {p['concurrent']['ttft_p50_s']:.2f} s"
        )
    if "plain_bf16" in r:
        print(
            f"plain generate in bf16, alone: {r['plain_bf16']['single']['output_tokens_per_s']:.1f} tokens/s "
            f"(tunelab x{r['single_stream_ratio_vs_plain_bf16']:.2f})"
        )
    for weights, q in r["quality"].items():
        print(
            f"{weights} vs fp32 on {q['prompts']} prompts: {q['identical_completions']:.0%} identical greedy "
            f"completions, teacher-forced top-1 agreement {q['teacher_forced_top1_agreement']:.3f}"
        )
    print(f"details: {out / 'bench-serve.json'}")


@bench_app.command("jobs")
def bench_jobs(
    out: Annotated[Path, typer.Option(help="Where the logs and bench-jobs.json go.")] = Path("runs/bench-jobs"),
    model: Annotated[str | None, typer.Option(help="Local model dir (default: bundled).")] = None,
    steps: Annotated[int, typer.Option(min=2, help="Training steps of each job.")] = 8,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent API clients while a job trains.")] = 8,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The jobs service: queue overhead, API latency while training, exact resume after kill -9, and the
    job's wall time against the same training and evaluation run without the service."""
    import json

    from tunelab.bench.jobs import bench_jobs as run_bench

    r = run_bench(out, model=model, steps=steps, clients=clients, log=(lambda m: None) if json_ else print)
    if json_:
        print(json.dumps(r, indent=2))
        return
    print(f"submit_to_running_s {r['submit_to_running_s']:.2f}; api_p99_ms {r['api_p99_ms']:.1f} "
          f"({r['clients']} clients while training); resume_exact {r['resume_exact']}; job {r['job_s']:.0f} s vs "
          f"direct {r['direct_s']:.0f} s: x{r['service_overhead']:.2f}")  # fmt: skip
    print(f"details: {out / 'bench-jobs.json'}")


@bench_app.command("export")
def bench_export(
    out: Annotated[Path, typer.Option(help="Where bench-export.json and the exports go.")] = Path("runs/bench-export"),
    run: Annotated[
        Path | None, typer.Option(help="A finished run (default: the newest runs/quickstart-*, else a new one).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Parity on the first N eval items only.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The quickstart's adapter as GGUF f16/q8_0/q4_k_m checked by llama.cpp against tunelab's model (top-1
    agreement, accuracy deltas), and llama.cpp's single-stream tokens/s beside tunelab serve's."""
    import json
    import sys

    from tunelab.bench.export import bench_export as run_bench

    r = run_bench(out, run=run, limit=limit, log=lambda m: print(m, file=sys.stderr))
    if json_:
        print(json.dumps(r, indent=2))
        return
    print(f"f16 top-1 agreement {r['f16_top1_agreement']:.4f} (KL {r['f16_mean_kl']:.2e}) on {r['items']} items")
    print(f"accuracy delta: q8_0 {r['q8_accuracy_delta']:+.1f} points, q4_k_m {r['q4_accuracy_delta']:+.1f} points")
    for k, g in r["gates"].items():
        print(f"  gate {k}: {'passed' if g['passed'] else 'FAILED: ' + '; '.join(g['failures'])}")
    print(f"single stream: tunelab serve {r['tunelab_serve_tok_s']:.1f} tokens/s, llama.cpp q8_0 "
          f"{r['llamacpp_tok_s']:.1f} tokens/s (ratio {r['ratio_tunelab_over_llamacpp']:.2f})")  # fmt: skip
    print(f"details: {out / 'bench-export.json'}")


@bench_app.command("watermark")
def bench_watermark(
    out: Annotated[Path, typer.Option(help="Where bench-watermark.json goes.")] = Path("runs/bench-watermark"),
    prompts: Annotated[int, typer.Option(min=4, help="Prompts (each gets a marked and an unmarked reply).")] = 200,
    tokens: Annotated[int, typer.Option(min=16, help="Tokens per reply.")] = 200,
    finetune_steps: Annotated[int, typer.Option(min=1, help="LoRA steps on the marked replies.")] = 60,
    deltas: Annotated[str, typer.Option(help="Deltas compared in by_delta (comma-separated).")] = "1.0,1.5,2.0",
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The serving watermark on the default model: TPR at FPR 1%, FPR on human text, perplexity cost, TPR after a
    word-substitution attack and after fine-tuning another model on marked replies."""
    import json
    import sys

    from tunelab.bench.watermark import bench_watermark as run_bench

    r = run_bench(out, prompts=prompts, tokens=tokens, finetune_prompts=max(4, prompts // 2),
                  deltas=tuple(float(d) for d in deltas.split(",") if d.strip()), finetune_steps=finetune_steps,
                  log=lambda m: print(m, file=sys.stderr))  # fmt: skip
    if json_:
        print(json.dumps(r, indent=2))
        return
    for k, g in r["goals"].items():
        print(f"{k:24s} {r[k]:.4f}  (goal {g['goal']}: {'met' if g['met'] else 'NOT met'})")
    print(f"tpr_after_paraphrase     {r['tpr_after_paraphrase']:.4f}")
    for d, x in r["by_delta"].items():
        print(f"  delta {d}: tpr_at_fpr1 {x['tpr_at_fpr1']:.3f}, ppl_increase {x['ppl_increase']:+.3f}, "
              f"after paraphrase {x['tpr_after_paraphrase']:.3f}")  # fmt: skip
    print(f"tpr_after_finetune       {r['tpr_after_finetune']:.4f}  (mean z {r['z_mean_after_finetune']:+.2f}; "
          f"unmarked {r['z_mean_unmarked']:+.2f}, marked {r['z_mean_marked']:+.2f})")  # fmt: skip
    print(f"details: {out / 'bench-watermark.json'}")


@bench_app.command("image")
def bench_image(
    out: Annotated[Path, typer.Option(help="Where the runs and bench-image.json go.")] = Path("runs/bench-image"),
    steps: Annotated[int, typer.Option(min=10, help="Steps each side trains in the speed comparison.")] = 200,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """The default image fine-tune (digits 5-9 taught to a base that saw 0-4): class accuracy and KID of base vs
    tuned samples, and images/s and peak RSS against diffusers' own LoRA training loop on the same data and steps."""
    import json
    import sys

    from tunelab.bench.image import bench_image as run_bench

    r = run_bench(out, steps, log=(lambda m: print(m, file=sys.stderr)) if json_ else print)
    if json_:
        print(json.dumps(r, indent=2))
        return
    k = r["kid"]
    print(
        f"class accuracy {r['base_class_accuracy']:.3f} -> {r['tuned_class_accuracy']:.3f} (target >= 0.8); "
        f"KID {k['base']:.3f} -> {k['tuned']:.3f} (change {k['delta_ci95'][0]:+.3f} to {k['delta_ci95'][1]:+.3f}); "
        f"speed x{r['speed_ratio']:.2f} vs diffusers (target >= 1.5), peak RSS x{r['memory_ratio']:.2f} "
        f"(target <= 0.5), the loop's own RSS x{r['loop_memory_ratio']:.2f}"
    )
