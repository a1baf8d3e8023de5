"""`tunelab govern`: evidence for frameworks, the risk register and incident log, and the hash chain's check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.app import app

govern_app = typer.Typer(help="Governance: evidence crosswalks (NIST AI RMF, AI 600-1, ISO/IEC 42001), verify.")
app.add_typer(govern_app, name="govern")


@govern_app.command("evidence")
def evidence(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    framework: Annotated[str, typer.Option(help="nist-ai-rmf | nist-ai-600-1 | iso-42001 | all")] = "all",
    out: Annotated[Path | None, typer.Option(help="Output directory (default RUN/evidence).")] = None,
    store: Annotated[
        Path | None, typer.Option(help="Serving store (SQLite) whose guard decisions make the incident log.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Incident log: only requests for this model name.")] = None,
    owner: Annotated[str, typer.Option(help="Owner written on each risk of the register.")] = "",
    mapping: Annotated[Path | None, typer.Option(help="Your own copy of frameworks.yaml.")] = None,
    serve_config: Annotated[
        Path | None, typer.Option(help="The serve.yaml the model is served with (its watermark section).")
    ] = None,
) -> None:
    """Write evidence.json/.md/.html (each framework item: evidenced, partial or not, with the run's figures and
    the artifacts' sha256), risks.json/.md and, with --store, incidents.json."""
    from tunelab.errors import DataError
    from tunelab.govern.evidence import FRAMEWORKS, write_evidence
    from tunelab.govern.incidents import incident_log

    if not (run / "manifest.json").is_file():
        raise DataError("not a run directory: no manifest.json", file=run)
    fws = list(FRAMEWORKS) if framework == "all" else [f.strip() for f in framework.split(",") if f.strip()]
    inc = incident_log(store, model) if store is not None else None
    wm = None
    if serve_config is not None:
        from tunelab.serve.config import load_serve_config

        wm = load_serve_config(serve_config).watermark.model_dump()
    res = write_evidence(run, out or run / "evidence", fws, incidents=inc, owner=owner, mapping_file=mapping,
                         watermark=wm)  # fmt: skip
    for fw, c in res["frameworks"].items():
        print(f"{fw:14s} {c['evidenced']:2d} evidenced, {c['partial']:2d} partial, "
              f"{c['not evidenced']:2d} not evidenced")  # fmt: skip
    print(json.dumps(res))


@govern_app.command("verify")
def verify(
    run: Annotated[Path, typer.Argument(help="A run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Every check as JSON.")] = False,
) -> None:
    """Recompute every hash from data to report (and exports); exit 1 naming the first file that changed."""
    from tunelab.govern.verify import first_failure, verify_run

    checks = verify_run(run)
    bad = first_failure(checks)
    if as_json:
        print(json.dumps({"ok": bad is None, "checks": [c.to_json() for c in checks]}, indent=1))
    else:
        stages: dict[str, list[int]] = {}
        for c in checks:
            s = stages.setdefault(c.stage, [0, 0])
            s[0 if c.status == "ok" else 1] += 1
        for stage, (ok, failed) in stages.items():
            print(f"{stage:12s} {ok:4d} ok" + (f", {failed} FAILED" if failed else ""))
    if bad is not None:
        typer.echo(f"{bad.status}: {bad.what} (stage {bad.stage}; recorded {str(bad.recorded)[:16]}, now "
                   f"{str(bad.actual)[:16]})", err=True)  # fmt: skip
        raise typer.Exit(1)
    print(f"ok: {len(checks)} hashes match")


watermark_app = typer.Typer(help="The serving watermark (keyed green list): detect it in text.")
app.add_typer(watermark_app, name="watermark")


def _texts(source: str) -> list[tuple[str, str]]:
    """(label, text) pairs: a JSONL file (a `text` or `content` field, or an OpenAI response), a text file
    (one text), or the argument itself."""
    from tunelab.errors import DataError

    p = Path(source)
    if not p.is_file():
        return [("argument", source)]
    if p.suffix != ".jsonl":
        return [(p.name, p.read_text(encoding="utf-8"))]
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            text = obj.get("text") or obj.get("content") or obj["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise DataError("no text in this line (a `text` or `content` field, or an OpenAI chat response)",
                            file=p, line=n, field="text") from None  # fmt: skip
        out.append((f"{p.name}:{n}", str(text)))
    return out


@watermark_app.command("detect")
def detect(
    source: Annotated[str, typer.Argument(help="A text, a text file, or a JSONL file (one text per line).")],
    model: Annotated[str | None, typer.Option(help="The served model's directory or spec (its tokenizer).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="The key (default $TUNELAB_HOME/watermark.key).")] = None,
    gamma: Annotated[float, typer.Option(help="The server's watermark.gamma.")] = 0.25,
    alpha: Annotated[float, typer.Option(help="p-value under which a text is called marked.")] = 0.01,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """z-score and one-sided p-value per text: how unlikely its share of green tokens is without the mark."""
    from tunelab.govern.watermark import Watermark, default_key_file, load_key
    from tunelab.models.loading import load_tokenizer, resolve_model

    wm = Watermark(load_key(key_file or default_key_file(), create=False), gamma=gamma)
    tok = load_tokenizer(resolve_model(model).path)
    vocab = len(tok)
    rows = []
    for label, text in _texts(source):
        s = wm.score(tok(text, add_special_tokens=False)["input_ids"], vocab)
        rows.append({"text": label, **s, "marked": s["p_value"] is not None and s["p_value"] < alpha})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows:
        z = "n/a" if r["z"] is None else f"{r['z']:+.2f}"
        p = "n/a" if r["p_value"] is None else f"{r['p_value']:.2e}"
        print(f"{r['text'][:40]:40s} tokens {r['tokens']:5d}  green {r['green']:5d}  z {z:>6s}  p {p}  "
              f"{'MARKED' if r['marked'] else 'not marked'}")  # fmt: skip
