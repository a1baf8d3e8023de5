"""Commands of the pipeline: quickstart, train, generate, report, eval, compare, data audit."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.app import app


@app.command()
def quickstart(
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/quickstart-<time>).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Training steps (default from the config: 48).")] = None,
    model: Annotated[str | None, typer.Option(help="Local Hugging Face model dir or .gguf (default: bundled)")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config with overrides of the defaults.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value")] = None,
) -> None:
    """Examples → audited data → LoRA → base-vs-tuned evaluation → report, on the default model and task."""
    from tunelab.quickstart import QuickstartOptions, run_quickstart

    s = run_quickstart(
        QuickstartOptions(out=out, max_steps=max_steps, model=model, config=config, overrides=set_ or [])
    )
    _print_done(s)


def _print_done(s: dict[str, object]) -> None:
    from rich.console import Console

    c = Console()
    run = Path(str(s["run_dir"]))
    c.print()
    c.print(f"[bold]report[/]    {run / 'report.html'}")
    c.print(f"[bold]adapter[/]   {run / 'model'}  (model card: model/README.md)")
    c.print(f"[bold]summary[/]   {run / 'summary.json'}")
    c.print(f"[bold]eval[/]      {run / 'eval' / 'predictions.jsonl'}")
    c.print(f"[bold]audit[/]     {run / 'audit' / 'audit.json'}")
    b, t, comp, tm = s["base"], s["tuned"], s["comparison"], s["timings"]
    assert isinstance(b, dict) and isinstance(t, dict) and isinstance(comp, dict) and isinstance(tm, dict)
    c.print(f"\n{s['verdict']}\n", highlight=False)
    print(
        f"accuracy {b['accuracy']:.3f} → {t['accuracy']:.3f} (base → tuned), "
        f"p = {comp['p_value']:.2g}, wall time {tm['total_s']:.0f} s"
    )


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (see configs/).")] = None,
    preset: Annotated[str | None, typer.Option(help="A built-in config instead of a file: quickstart, image.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/train-<time>).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its newest good checkpoint.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides train.max_steps).")] = None,
    force: Annotated[bool, typer.Option(help="Train even when the data audit fails (recorded).")] = False,
    mlflow: Annotated[str | None, typer.Option(help="Also log to this MLflow tracking URI.")] = None,
) -> None:
    """Fine-tune (LoRA or full) with packing, checkpoints and exact resume; runs under torchrun too.

    `task: image` in the config (or --preset image) fine-tunes a diffusion UNet instead: see docs/images.md."""
    from tunelab.train.command import TrainOptions, resolve_config, run_train

    opts = TrainOptions(
        config=config,
        preset=preset,
        overrides=set_ or [],
        out=out,
        resume=resume,
        max_steps=max_steps,
        force=force,
        mlflow=mlflow,
    )
    if resolve_config(opts).task == "image":
        from tunelab.images.command import run_image_train

        s = run_image_train(opts)
        if s:
            k = s["kid"]
            acc = (
                f"; class accuracy {s['base_class_accuracy']:.3f} -> {s['tuned_class_accuracy']:.3f} (base -> tuned, "
                f"p = {s['class_accuracy_p']:.2g})"
                if s["tuned_class_accuracy"] is not None
                else "; no judge (the captions are not classes)"
            )
            kid = f", KID {k['base']:.4f} -> {k['tuned']:.4f}" if k else ""
            print(f"{s['steps']} steps on {s['examples']} images, {s['images_per_s']:.0f} images/s{acc}{kid}")
            print(f"report    {Path(s['run_dir']) / 'report.html'}")
        return
    s = run_train(opts)
    if s:  # process 0 reports
        el = f", held-out loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else ""
        print(
            f"{s['steps']} steps, final loss {s['final_loss']:.4f}{el}, {s['tokens_per_s']:.0f} tokens/s, "
            f"peak RSS {s['peak_rss_gb']:.2f} GB"
        )
        print(f"model     {Path(s['run_dir']) / 'model'}")
        print(f"summary   {Path(s['run_dir']) / 'summary.json'}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    model: Annotated[str | None, typer.Option(help="Local model dir or .gguf (default: bundled).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="A PEFT adapter directory, e.g. RUN/model.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.0,
    seed: int = 0,
) -> None:
    """Try a model: generate a reply to PROMPT, streamed to the terminal."""
    from tunelab.models.generate import generate_stream

    generate_stream(
        prompt,
        model_spec=model,
        adapter=adapter,
        system=system,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """Rebuild report.html from the files of a run directory."""
    from tunelab.govern.provenance import record_report
    from tunelab.quickstart import load_summary
    from tunelab.report.html import write_report

    summary = load_summary(run_dir)
    if summary.get("task") == "image":
        from tunelab.images.report import write_image_report

        path = write_image_report(run_dir, summary)
    else:
        path = write_report(run_dir, summary)
    if (run_dir / "manifest.json").is_file():
        record_report(run_dir, path)
    print(path)


eval_app = typer.Typer(
    help="Evaluate a model (and adapter) on a built-in task or your file; `compare` pairs two runs.",
    invoke_without_command=True,
)
app.add_typer(eval_app, name="eval")


@eval_app.callback()
def eval_(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Option(help="Local model dir or .gguf (default: bundled).")] = None,
    adapter: Annotated[Path | None, typer.Option(help="A PEFT adapter directory, e.g. RUN/model.")] = None,
    task: Annotated[str | None, typer.Option(help="Built-in task: bbc-topics | bbc-headlines.")] = None,
    data: Annotated[Path | None, typer.Option(help="Your eval file (JSONL, CSV or Parquet).")] = None,
    kind: Annotated[
        str, typer.Option(help="auto | classification | generation | multiple_choice | perplexity | code")
    ] = "auto",
    labels: Annotated[str | None, typer.Option(help="Classification label set, comma-separated.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt for chat items without one.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/eval-<time>).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Default by kind (16 labels, 128 text).")] = None,
    latency_samples: Annotated[int, typer.Option(min=0, help="Single requests timed for latency.")] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    probes: Annotated[
        str | None,
        typer.Option(help="Also run probes: all, none, or some of safety,hallucination,bias,robustness,general,"
                          "memorisation (with --train)."),
    ] = None,
    train: Annotated[
        Path | None, typer.Option(help="Memorisation probe: the training records (chat JSONL) to look for.")
    ] = None,
    canaries: Annotated[
        Path | None, typer.Option(help="Memorisation probe: a run's data/canaries.json (planted secrets).")
    ] = None,
    judge: Annotated[
        str | None, typer.Option(help="Local judge model for faithfulness of answers with a context (or: default).")
    ] = None,
    seed: int = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout.")] = False,
) -> None:
    """Score one model on one eval set: predictions.jsonl, latency.jsonl and metrics.json."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from tunelab.evaluate.command import EvalOptions, run_eval
    from tunelab.evaluate.probes import parse_probes
    from tunelab.evaluate.run import EvalParams

    params = EvalParams(
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        latency_samples=latency_samples,
        seed=seed,
        limit=limit,
    )
    r = run_eval(
        EvalOptions(
            model=model,
            adapter=adapter,
            task=task,
            data=data,
            kind=kind,
            labels=[x.strip() for x in labels.split(",") if x.strip()] if labels else [],
            system=system,
            out=out,
            params=params,
            probes=parse_probes(probes),
            judge=judge,
            train=train,
            canaries=canaries,
        )
    )
    if json_:
        print(json.dumps(r, indent=2, ensure_ascii=False))
        return
    shown = {k: v for k, v in r["metrics"].items() if isinstance(v, int | float)}
    print(f"{r['task']} ({r['kind']}, {r['n']} items): " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    lat = r["latency"]
    if lat.get("samples"):
        print(
            f"latency: first token p50 {lat['ttft_p50_s'] * 1000:.0f} ms, p95 {lat['ttft_p95_s'] * 1000:.0f} ms; "
            f"{lat['tokens_per_s_p50']:.1f} tokens/s (p50)"
        )
    for name, summary in r["probes"].items():
        shown = {k: v for k, v in summary.items() if isinstance(v, float)}
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in shown.items()))
    for w in r["warnings"]:
        print(f"warning: {w}")
    print(f"details: {Path(r['out']) / 'metrics.json'}  (predictions.jsonl, latency.jsonl, probes/)")


@eval_app.command("export-ab")
def eval_export_ab(
    a: Annotated[Path, typer.Argument(help="Eval directory A (e.g. base).")],
    b: Annotated[Path, typer.Argument(help="Eval directory B (e.g. tuned).")],
    out: Annotated[Path, typer.Option(help="Where ab.csv, ab.html and ab-key.json go.")] = Path("runs/ab"),
    n: Annotated[int | None, typer.Option(min=1, help="Only this many pairs (seeded sample).")] = None,
    seed: int = 0,
) -> None:
    """Blind, shuffled A/B pairs for human raters: a CSV and a self-contained HTML page."""
    from tunelab.evaluate.ab import export_ab

    r = export_ab(a, b, out, n=n, seed=seed)
    print(f"{r['pairs']} pairs: {r['html']} (or {r['csv']}); keep {r['key']} away from the raters")


@eval_app.command("import-ab")
def eval_import_ab(
    ab_dir: Annotated[Path, typer.Argument(help="The export-ab output directory (holds ab-key.json).")],
    ratings: Annotated[
        Path, typer.Argument(help="ratings.csv from the page, or ab.csv with the rating column filled.")
    ],
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Read human ratings back: B's win rate over A with a CI and a sign test."""
    import json

    from tunelab.evaluate.ab import import_ab

    r = import_ab(ab_dir, ratings)
    if json_:
        print(json.dumps(r, indent=2))
        return
    lo, hi = r["ci95"]
    print(
        f"{r['rated']} rated: B wins {r['b_wins']}, A wins {r['a_wins']}, ties {r['ties']}; B win rate "
        f"{r['b_win_rate']:.3f} (95% CI [{lo:.3f}, {hi:.3f}]), sign test p = {r['p_value']:.3g}"
    )


@app.command()
def compare(
    a: Annotated[Path | None, typer.Argument(help="Eval directory of the reference model (e.g. base).")] = None,
    b: Annotated[Path | None, typer.Argument(help="Eval directory of the candidate (e.g. tuned).")] = None,
    gate: Annotated[
        str | None,
        typer.Option(help='Clauses, e.g. "accuracy>=+0.02, rouge_l>=-0.01": signed = change, unsigned = value.'),
    ] = None,
    resamples: Annotated[int, typer.Option(min=1000, help="Bootstrap / permutation resamples.")] = 10_000,
    seed: int = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    sweep: Annotated[
        str | None, typer.Option(help="Rank the jobs of this sweep (metadata.sweep) instead of comparing A and B.")
    ] = None,
    store: Annotated[str | None, typer.Option(help="With --sweep: the server's SQLite file.")] = None,
) -> None:
    """B vs A on the same items (paired by id): each metric's change with paired statistics; exit 1 if a gate fails.
    With --sweep NAME: the sweep's jobs ranked on their held-out items, Holm-adjusted."""
    import json

    from tunelab.errors import ConfigError
    from tunelab.evaluate.compare import check_gate, compare_runs, render_terminal

    if sweep is not None:
        _rank_sweep(sweep, store, resamples, seed, json_)
        return
    if a is None or b is None:
        raise ConfigError("give two eval directories A and B, or --sweep NAME", field="A/B")

    r = compare_runs(a, b, gate=gate, resamples=resamples, seed=seed)
    if json_:
        print(json.dumps(r, indent=2, ensure_ascii=False))
    else:
        render_terminal(r)
    check_gate(r)



def _rank_sweep(name: str, store: str | None, resamples: int, seed: int, json_: bool) -> None:
    import json

    from tunelab.jobs.store import JobStore
    from tunelab.jobs.sweep import rank
    from tunelab.serve.store import Store

    jobs, _ = JobStore(Store(store)).jobs(None, limit=10_000, metadata={"sweep": name})
    r = rank(jobs, resamples=resamples, seed=seed)
    if json_:
        print(json.dumps(r, indent=2))
        return
    print(f"sweep {name}: {len(r['ranked'])} of {r['n_jobs']} jobs ranked by {r['metric']} on the same held-out items")
    for x in r["ranked"]:
        vs = f"; best - this {x['best_minus_this']:+.3f}, p_holm {x['p_vs_best_holm']:.2g}" if x["rank"] > 1 else ""
        print(f"{x['rank']:>2}. {x['variant'] or x['job']:<40} {x['tuned']:.3f} ({x['delta']:+.3f} vs base, "
              f"p_holm {x['p_vs_base_holm']:.2g}){vs}")  # fmt: skip


data_app = typer.Typer(help="Data: audit what you will train on.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("audit")
def data_audit(
    paths: Annotated[list[Path], typer.Argument(help="Training data files (chat JSONL).")],
    eval_: Annotated[
        list[Path] | None, typer.Option("--eval", help="Eval set(s) to check contamination against.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Check lengths and the chat template with this model.")] = None,
    policy: Annotated[Path | None, typer.Option(help="YAML policy (allowed licences, gates).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/audit-<time>).")] = None,
    max_length: Annotated[int | None, typer.Option(help="Token limit (default: the model's context).")] = None,
    dedup: Annotated[
        bool, typer.Option(help="Write cleaned copies without duplicates and contaminated records.")
    ] = False,
    redact: Annotated[bool, typer.Option(help="Write cleaned copies with PII replaced by typed placeholders.")] = False,
    format_: Annotated[str, typer.Option("--format", help="auto | chat | completion | classification | text")] = "auto",
    near_threshold: Annotated[
        float, typer.Option(min=0.1, max=1.0, help="Jaccard (word 5-grams) at which texts are near duplicates.")
    ] = 0.8,
    licence: Annotated[str | None, typer.Option(help="Licence (SPDX id or text) of files with no datacard.")] = None,
    source: Annotated[str | None, typer.Option(help="Where the data comes from (files with no datacard).")] = None,
    owner: Annotated[str | None, typer.Option(help="Who owns the data (files with no datacard).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print audit.json to stdout.")] = False,
) -> None:
    """Validate, deduplicate, check contamination, PII and licences. Exit 1 when the policy says no."""
    import json

    from tunelab.data.audit_command import AuditOptions, audit_files
    from tunelab.errors import GateFailed

    res, out_dir = audit_files(
        AuditOptions(
            list(paths),
            list(eval_ or []),
            out,
            model,
            policy,
            max_length,
            dedup,
            redact,
            format_,
            near_threshold,
            datacard={"licence": {"id": licence} if licence else None, "source": source, "owner": owner}
            if (licence or source or owner)
            else None,
        )
    )
    r = res.report
    if json_:
        print(json.dumps(r, indent=2, ensure_ascii=False))
    else:
        cont = sum(c["contaminated"] for c in r["contamination"].values())
        pii = sum(r["pii"]["counts"].values())
        print(
            f"{r['records_total']} records: {r['records_valid']} valid, {r['quarantined']} quarantined, "
            f"{r['duplicates']['exact']} exact and {r['duplicates']['near']} near duplicates, "
            f"{cont} contaminated eval items, {pii} PII findings; verdict {r['verdict']}"
        )
        for w in r["warnings"]:
            print(f"warning: {w}")
        if r.get("preflight"):
            from rich.console import Console

            from tunelab.data.preflight import render_terminal

            Console().print("what is trained (green):\n" + render_terminal(r["preflight"]), highlight=False)
        print(f"details: {out_dir / 'audit.html'}  (audit.json, quarantine.jsonl)")
    if not res.passed:
        raise GateFailed("audit failed: " + "; ".join(r["reasons"]))
