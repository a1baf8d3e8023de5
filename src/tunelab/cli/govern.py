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
    res = write_evidence(run, out or run / "evidence", fws, incidents=inc, owner=owner, mapping_file=mapping)
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
