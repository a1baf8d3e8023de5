"""`tunelab export`: a run's model as merged safetensors, GGUF or an adapter, with its parity checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.app import app


@app.command("export")
def export_cmd(
    target: Annotated[Path, typer.Argument(help="A run directory, or its adapter directory (RUN/model).")],
    format_: Annotated[str, typer.Option("--format", help="merged | gguf | peft")] = "gguf",
    quantize: Annotated[
        str, typer.Option(help="GGUF types, comma-separated: f16, q8_0, q4_k_m (the first is the Modelfile's).")
    ] = "f16",
    out: Annotated[Path | None, typer.Option(help="Output directory (default RUN/export).")] = None,
    eval_file: Annotated[
        Path | None, typer.Option("--eval", help="Items to check parity on (default: the run's eval set).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Check parity on the first N items only.")] = None,
    max_new: Annotated[int, typer.Option(min=1, help="Greedy tokens generated per item.")] = 16,
    lora: Annotated[
        bool, typer.Option(help="gguf: also the LoRA alone as a GGUF adapter (with the base's f16 GGUF), checked.")
    ] = False,
) -> None:
    """Export, then check the export against the evaluated model with an independent runtime (transformers
    for merged, llama.cpp for GGUF): prompt tokens, greedy replies, top-1 agreement, KL and the task's accuracy.
    Writes parity.json and export.json; exits 1 when a parity gate fails."""
    import json

    from tunelab.export.command import ExportRequest, run_export
    from tunelab.progress import Reporter

    quants = [q.strip() for q in quantize.split(",") if q.strip()]
    res = run_export(ExportRequest(target, format_, quants, out, eval_file, limit, max_new, lora), Reporter())
    for kind, r in res["results"].items():
        s, g = r["summary"], r["gate"]
        acc = f", accuracy {s['reference_accuracy']:.3f} -> {s['accuracy']:.3f}" if "accuracy" in s else ""
        print(f"{kind:8s} {'ok  ' if g['passed'] else 'FAIL'} top-1 {s['top1_agreement']:.4f}, KL {s['mean_kl']:.2e}, "
              f"greedy {s['greedy_agreement']:.3f}, prompt tokens {s['prompt_tokens_equal']:.3f}{acc}"
              + (f"  ({'; '.join(g['failures'])})" if g["failures"] else ""))  # fmt: skip
    print(json.dumps({"out": res["out"], "passed": res["passed"]}))
    if not res["passed"]:
        raise typer.Exit(1)
