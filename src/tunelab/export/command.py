"""`tunelab export RUN/model --format merged|gguf|peft [--quantize f16,q8_0,q4_k_m] --out DIR`.

Writes the artifacts, then always checks them against the model tunelab evaluated (`parity`) on the run's
eval items (or `--eval FILE`), and writes into `DIR`:

    merged/              the merged HF model (formats merged and gguf: the GGUF is converted from it)
    peft/                the adapter (format peft)
    model-<quant>.gguf   one file per quantization (format gguf), made by llama.cpp's own tools
    adapter-f16.gguf     with --lora: the LoRA alone as GGUF, and base-f16.gguf, the base it applies to
    Modelfile            for Ollama, naming the first GGUF
    parity.json          per artifact: the comparison's summary, its gate, and per-item rows
    export.json          what was exported from what: sha256 of the adapter, the base and every file written

When the export comes from a run directory, `export.json`'s hashes are also recorded in the run's
`manifest.json` (`exports`), so the provenance chain reaches the exported files, and the run's report is
rebuilt with a row for it. The exit code is 1 when a
gate fails (the files stay, with the failed gate in `parity.json`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, DataError
from tunelab.export import gguf as gguf_tools
from tunelab.export import parity
from tunelab.export.merge import merged, peft_copy, tuned_model
from tunelab.fsutil import atomic_write_json, dir_digest, sha256_file
from tunelab.progress import Reporter

FORMATS = ("merged", "gguf", "peft")


@dataclass
class ExportRequest:
    target: Path  # a run directory, or an adapter directory (RUN/model)
    fmt: str = "gguf"
    quantize: list[str] = field(default_factory=lambda: ["f16"])
    out: Path | None = None
    eval_file: Path | None = None
    limit: int | None = None
    max_new: int = 16
    lora: bool = False  # gguf: also a LoRA-only GGUF beside the base's f16 GGUF (llama.cpp applies it at load)


def locate(target: Path) -> tuple[Path, Path | None]:
    """(adapter directory, run directory or None)."""
    if (target / "adapter_config.json").is_file():
        run = target.parent if (target.parent / "manifest.json").is_file() else None
        return target, run
    if (target / "model" / "adapter_config.json").is_file():
        return target / "model", target
    raise DataError("neither a run directory nor an adapter directory (no adapter_config.json)", file=target)


def eval_items(run: Path | None, eval_file: Path | None, limit: int | None) -> tuple[list[parity.Item], list[str]]:
    """The items to compare on, and the label set when they are classification items."""
    from tunelab.evaluate.items import read_eval_file

    kind, labels = "auto", []
    metrics_file = run / "eval" / "tuned" / "metrics.json" if run else None
    if metrics_file and metrics_file.is_file():
        m = json.loads(metrics_file.read_text(encoding="utf-8"))
        kind = m.get("kind", "auto")
        labels = list((m.get("metrics") or {}).get("labels") or [])
    path = eval_file or _run_items(run)
    if path is None or not path.is_file():
        raise DataError("no eval items to check the export on: give --eval FILE", file=path, field="--eval")
    found = read_eval_file(path, kind)
    if found and found[0].kind == "classification" and not labels:
        labels = sorted({it.reference or "" for it in found})
    items = parity.items_of([it for it in found if it.kind in ("classification", "generation")], None, limit)
    if not items:
        raise DataError("no classification or generation items to compare on", file=path, field="--eval")
    return items, labels


def _run_items(run: Path | None) -> Path | None:
    """The run's held-out items; its training records when it has none (a job too small to hold any out): the
    check compares two runtimes on the same prompts, so seen prompts serve it as well, though the accuracy
    then says nothing of generalisation."""
    if run is None:
        return None
    held_out, train = run / "data" / "eval.jsonl", run / "data" / "train.jsonl"
    return held_out if held_out.is_file() or not train.is_file() else train


def run_export(req: ExportRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    rep = reporter or Reporter(quiet=True)
    if req.fmt not in FORMATS:
        raise ConfigError(f"unknown format {req.fmt!r}; known: {', '.join(FORMATS)}", field="--format")
    bad = [q for q in req.quantize if q not in gguf_tools.QUANTS]
    if bad:
        raise ConfigError(f"unknown quantization {bad[0]!r}; known: {', '.join(gguf_tools.QUANTS)}",
                          field="--quantize")  # fmt: skip
    adapter, run = locate(req.target)
    if req.fmt == "gguf":
        gguf_tools.check_tools()  # before anything is written
    out = req.out or ((run or adapter.parent) / "export")
    out.mkdir(parents=True, exist_ok=True)
    items, labels = eval_items(run, req.eval_file, req.limit)
    t0 = time.perf_counter()
    written: dict[str, str] = {}
    rep.info(f"reference: the evaluated model (base + adapter, fp32) on {len(items)} eval items")
    model, tok, base = tuned_model(adapter)
    ref = parity.HFRuntime(model, tok, "tunelab (base + PEFT adapter, fp32)")
    cache: dict[str, Any] = {}
    results: dict[str, Any] = {}

    def check(kind: str, cand: Any) -> None:
        rep.info(f"parity: {cand.name}")
        try:
            res = parity.compare(ref, cand, items, labels, max_new=req.max_new, ref_cache=cache)
        finally:
            if isinstance(cand, parity.LlamaCppRuntime):
                cand.close()
        results[kind] = {"summary": res["summary"], "gate": parity.gate(kind, res["summary"]), "rows": res["rows"]}

    if req.fmt == "peft":
        peft_copy(adapter, out / "peft")
        written.update(_hashes(out / "peft", out))
        m2, t2, _ = tuned_model(out / "peft")
        check("peft", parity.HFRuntime(m2, t2, "peft (adapter copy, loaded by PEFT)"))
    else:
        rep.info("merging the adapter into the base")
        merged(adapter, out / "merged")
        written.update(_hashes(out / "merged", out))
        from tunelab.models.loading import load_model, load_tokenizer

        check("merged", parity.HFRuntime(load_model(out / "merged"), load_tokenizer(out / "merged"),
                                         "transformers (merged directory)"))  # fmt: skip
    if req.fmt == "gguf":
        files = _gguf(out, req.quantize, rep)
        for q, f in files.items():
            written[f.name] = sha256_file(f)
            check(q, parity.LlamaCppRuntime(f))
        if req.lora:
            rep.info("GGUF LoRA adapter and the base's f16 GGUF")
            base_gguf = gguf_tools.convert(base.path, out / "base-f16.gguf", "f16")
            lora_gguf = gguf_tools.convert_lora(adapter, base.path, out / "adapter-f16.gguf")
            for f in (base_gguf, lora_gguf):
                written[f.name] = sha256_file(f)
            check("lora_f16", parity.LlamaCppRuntime(base_gguf, lora=lora_gguf))
        first = files[req.quantize[0]]
        stops = [str(tok.eos_token)] if tok.eos_token else []
        (out / "Modelfile").write_text(gguf_tools.modelfile(first.name, stops), encoding="utf-8")
        written["Modelfile"] = sha256_file(out / "Modelfile")
    passed = all(r["gate"]["passed"] for r in results.values())
    report = {
        "passed": passed,
        "format": req.fmt,
        "items": len(items),
        "eval_source": str(req.eval_file or _run_items(run) or ""),
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(out / "parity.json", report)
    manifest = {
        "adapter": str(adapter),
        "adapter_sha256": sha256_file(adapter / "adapter_model.safetensors"),
        "base": base.base_model_id,
        "base_weights_sha256": dir_digest(base.path),
        "format": req.fmt,
        "quantize": req.quantize if req.fmt == "gguf" else [],
        "files": dict(sorted(written.items())),
        "parity_sha256": sha256_file(out / "parity.json"),
        "parity_passed": passed,
        "llama_cpp_python": _llama_version() if req.fmt == "gguf" else None,
    }
    atomic_write_json(out / "export.json", manifest)
    if run is not None:
        _record_in_run(run, out, manifest)
    return {**report, "out": str(out), "manifest": manifest}


def _gguf(out: Path, quants: list[str], rep: Reporter) -> dict[str, Path]:
    """Each asked-for GGUF: f16 and q8_0 by the converter, q4_k_m quantized from an f16 file (the asked-for
    one, else a temporary one, removed after: only hashed, checked files stay in the export)."""
    files: dict[str, Path] = {}
    scratch = out / ".f16-for-quantize.gguf"
    try:
        for q in sorted(quants, key=lambda q: q != "f16"):  # f16 first: q4_k_m is made from it
            target = out / f"model-{q}.gguf"
            rep.info(f"GGUF {q}")
            if q == "q4_k_m":
                f16 = files.get("f16") or gguf_tools.convert(out / "merged", scratch, "f16")
                gguf_tools.quantize(f16, target, q)
            else:
                gguf_tools.convert(out / "merged", target, q)
            files[q] = target
    finally:
        scratch.unlink(missing_ok=True)
    return {q: files[q] for q in quants}


def _hashes(directory: Path, root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): sha256_file(f) for f in sorted(directory.rglob("*")) if f.is_file()}


def _llama_version() -> str | None:
    try:
        import llama_cpp

        return str(llama_cpp.__version__)
    except ImportError:
        return None


def forget_in_run(run: Path, out: Path) -> None:
    """An export deleted: its entry leaves the run's manifest (verify would find its files missing)."""
    path = run / "manifest.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        data["exports"] = [e for e in data.get("exports", []) if e.get("dir") != str(out)]
        atomic_write_json(path, data)


def _record_in_run(run: Path, out: Path, manifest: dict[str, Any]) -> None:
    """The export's hashes in the run's manifest (`exports`, one entry per export directory)."""
    path = run / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    entry = {"dir": str(out), "export_json_sha256": sha256_file(out / "export.json"), **{
        k: manifest[k] for k in ("format", "quantize", "files", "parity_passed")}}  # fmt: skip
    data["exports"] = [e for e in data.get("exports", []) if e.get("dir") != str(out)] + [entry]
    atomic_write_json(path, data)
    path = run / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if {"base", "tuned", "comparison"} <= summary.keys():  # a quickstart's report lists the exports: rebuilt
        from tunelab.govern.provenance import record_report
        from tunelab.report.html import write_report

        record_report(run, write_report(run, summary))
