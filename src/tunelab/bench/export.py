"""`tunelab bench export`: the quickstart's adapter exported to GGUF (f16, q8_0, q4_k_m) and merged safetensors,
each checked against the evaluated model on the run's eval set, and llama.cpp's decoding speed beside
tunelab serve's, in the same run on the same machine.

Figures:
- `f16_top1_agreement`: next-token top-1 agreement of llama.cpp on the f16 GGUF with tunelab's model (teacher-
  forced on the reference's own greedy replies), over every eval item;
- `q8_accuracy_delta`, `q4_accuracy_delta`: the task's accuracy on llama.cpp's replies (q8_0, q4_k_m) minus that
  of tunelab's model, in points, with the gates' verdicts;
- `llamacpp_tok_s` vs `tunelab_serve_tok_s`: completion tokens per second for one client alone, streamed, 64
  greedy tokens per request, each side behind its own OpenAI-compatible server (llama-cpp-python's
  `llama_cpp.server` on the q8_0 and f16 GGUFs, through `export.llamacpp` for its AMX workaround;
  `tunelab serve` on the merged model, its default weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.bench.serve import _free_port, _load, _start
from tunelab.export.command import ExportRequest, run_export
from tunelab.fsutil import atomic_write_json


def _quickstart_run(out: Path, log: Any) -> Path:
    """The newest finished quickstart run under runs/, else one made now."""
    found = sorted(Path("runs").glob("quickstart-*/summary.json"), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1].parent
    from tunelab.quickstart import QuickstartOptions, run_quickstart

    log("no finished quickstart run under runs/: running one")
    return Path(str(run_quickstart(QuickstartOptions(out=out / "quickstart"))["run_dir"]))


def _speed(cmd: list[str], env: dict[str, str], model: str, key: str, out: Path, name: str, n: int,
           ready: str = "/health") -> dict[str, Any]:  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start([c.replace("{port}", str(port)) for c in cmd], env, url, out / f"{name}.log", ready)
    try:
        _load(url, key, model, 1, 1, stream=True)  # warm-up, not timed
        return _load(url, key, model, 1, n, stream=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _reused(export: Path, run: Path) -> dict[str, Any] | None:
    """The parity of an earlier export of this same adapter in `export` (all three GGUFs there), else None."""
    from tunelab.fsutil import sha256_file

    try:
        manifest = json.loads((export / "export.json").read_text(encoding="utf-8"))
        parity = json.loads((export / "parity.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = manifest.get("adapter_sha256") == sha256_file(run / "model" / "adapter_model.safetensors")
    files = all((export / f"model-{q}.gguf").is_file() for q in ("f16", "q8_0", "q4_k_m"))
    return parity if same and files and set(parity.get("results", {})) >= {"f16", "q8_0", "q4_k_m"} else None


def bench_export(out: Path, *, run: Path | None = None, limit: int | None = None, requests: int = 8,
                 reuse: bool = True, log: Any = print) -> dict[str, Any]:  # fmt: skip
    """`reuse`: take the parity of an export of the same adapter already in `out` (it takes ~15 minutes)."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = (run or _quickstart_run(out, log)).resolve()
    res = _reused(out / "export", run) if reuse else None
    if res is None:
        log(f"exporting {run / 'model'}")
        res = run_export(ExportRequest(run, "gguf", ["f16", "q8_0", "q4_k_m"], out=out / "export", limit=limit))
    s = {k: v["summary"] for k, v in res["results"].items()}
    g = {k: v["gate"] for k, v in res["results"].items()}
    env = {**os.environ, "TUNELAB_HOME": str(out / "home"), "TOKENIZERS_PARALLELISM": "false"}
    key = json.loads(subprocess.run([sys.executable, "-m", "tunelab", "keys", "create", "--name", "bench", "--json"],
                                    env=env, capture_output=True, text=True, check=True).stdout)["key"]  # fmt: skip
    threads = str(os.cpu_count() or 1)
    speeds: dict[str, Any] = {}
    merged = out / "export" / "merged"
    log("tunelab serve on the merged model")
    speeds["tunelab_serve"] = _speed(
        [sys.executable, "-m", "tunelab", "serve", "--model", str(merged), "--port", "{port}"],
        env, merged.name, key, out, "tunelab_serve", requests,
    )  # fmt: skip
    for q in ("q8_0", "f16"):
        gguf = out / "export" / f"model-{q}.gguf"
        log(f"llama.cpp server on {gguf.name}")
        speeds[f"llamacpp_{q}"] = _speed(
            [sys.executable, "-m", "tunelab.export.llamacpp", "--model", str(gguf), "--port", "{port}", "--host",
             "127.0.0.1", "--n_threads", threads, "--n_ctx", "2048", "--model_alias", gguf.name],
            env, gguf.name, key, out, f"llamacpp_{q}", requests, ready="/v1/models",
        )  # fmt: skip
    tunelab_tok_s = speeds["tunelab_serve"]["output_tokens_per_s"]
    llamacpp_tok_s = speeds["llamacpp_q8_0"]["output_tokens_per_s"]
    result = {
        "bench": "export",
        "run": str(run),
        "items": s["f16"]["items"],
        "f16_top1_agreement": s["f16"]["top1_agreement"],
        "f16_mean_kl": s["f16"]["mean_kl"],
        "q8_accuracy_delta": s["q8_0"].get("accuracy_delta_points"),
        "q4_accuracy_delta": s["q4_k_m"].get("accuracy_delta_points"),
        "llamacpp_tok_s": llamacpp_tok_s,
        "tunelab_serve_tok_s": tunelab_tok_s,
        "ratio_tunelab_over_llamacpp": tunelab_tok_s / llamacpp_tok_s if llamacpp_tok_s else None,
        "gates": g,
        "parity": s,
        "speed": speeds,
        "sizes_mb": {f.name: round(f.stat().st_size / 2**20, 1) for f in sorted((out / "export").glob("*.gguf"))},
        "note": "accuracy deltas in points (export minus tunelab's model, same items, same parser); speeds: one "
        "client, streamed, 64 greedy tokens per request, each behind its own OpenAI-compatible server; "
        "llamacpp_tok_s is the q8_0 GGUF's (speed.llamacpp_f16 for f16)",
    }
    atomic_write_json(out / "bench-export.json", result)
    return result
