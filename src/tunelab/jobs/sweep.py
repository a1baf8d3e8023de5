"""Experiments: a sweep file becomes one fine-tuning job per variant, and `tunelab compare --sweep` ranks them.

A sweep file (YAML; every key but `grid` and `variants` is optional):

    name: rank-lr                       # the jobs carry metadata {"sweep": name, "variant": ...}
    model: smollm2-135m-instruct
    training_file: train.jsonl          # a path (uploaded once) or a file id
    validation_file: eval.jsonl
    seed: 7
    base: {tunelab: {max_steps: 24}}    # the request every job starts from
    grid:                               # every combination is a job
      tunelab.lora_rank: [4, 16]
      method.supervised.hyperparameters.learning_rate_multiplier: [0.5, 1.0]
    variants:                           # or named variants (crossed with the grid when both are given)
      lora: {}
      full: {tunelab.kind: full}

Over the API, `metadata.sweep` is the documented field: any client that creates jobs with the same
`metadata={"sweep": NAME}` makes a sweep that `tunelab compare --sweep NAME` ranks.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import ConfigError, DataError

_KEYS = {"name", "model", "training_file", "validation_file", "seed", "base", "grid", "variants"}


def load_sweep(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=path) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", file=path) from None
    if not isinstance(data, dict):
        raise ConfigError("a sweep file is a YAML mapping", file=path)
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"unknown key (known: {', '.join(sorted(_KEYS))})", file=path, field=sorted(unknown)[0])
    for k in ("name", "training_file"):
        if not data.get(k):
            raise ConfigError("required", file=path, field=k)
    for k in ("grid", "variants"):
        if data.get(k) is not None and not isinstance(data[k], dict):
            raise ConfigError("must be a mapping", file=path, field=k)
    for k, v in (data.get("grid") or {}).items():
        if not isinstance(v, list) or not v:
            raise ConfigError("a grid axis is a non-empty list of values", file=path, field=f"grid.{k}")
    data["_dir"] = str(path.parent)
    return data


def _set(req: dict[str, Any], dotted: str, value: Any) -> None:
    node = req
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted!r}: {p!r} is not a mapping", field="grid")
    node[parts[-1]] = value


def expand(sweep: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(variant name, request body without the file ids) for every job of the sweep."""
    grid = sweep.get("grid") or {}
    named = sweep.get("variants") or {"": {}}
    out = []
    for vname, overrides in named.items():
        for combo in itertools.product(*grid.values()) if grid else [()]:
            req = copy.deepcopy(sweep.get("base") or {})
            for k, v in (overrides or {}).items():
                _set(req, k, v)
            for k, v in zip(grid, combo, strict=True):
                _set(req, k, v)
            axes = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(grid, combo, strict=True)]
            parts = ([vname] if vname else []) + axes
            req.setdefault("tunelab", {})
            out.append((",".join(parts) or "default", req))
    return out


def submit(sweep: dict[str, Any], client: Any) -> list[dict[str, Any]]:
    """Upload the files named by path (once) and create the jobs; what was created."""
    ids: dict[str, str | None] = {}
    for k in ("training_file", "validation_file"):
        v = sweep.get(k)
        if v is None or str(v).startswith("file-"):
            ids[k] = v
            continue
        p = Path(v) if Path(v).is_absolute() else Path(sweep["_dir"]) / v
        if not p.is_file():
            raise DataError("no such file", file=p, field=k)
        with open(p, "rb") as f:
            ids[k] = client.files.create(file=f, purpose="fine-tune").id
    model = sweep.get("model") or client.models.list().data[0].id
    made = []
    for variant, req in expand(sweep):
        body = {k: v for k, v in req.items() if k != "tunelab"}
        body.setdefault("seed", sweep.get("seed"))
        meta = {**(body.pop("metadata", None) or {}), "sweep": str(sweep["name"]), "variant": variant[:512]}
        job = client.fine_tuning.jobs.create(
            model=model, training_file=ids["training_file"], validation_file=ids.get("validation_file"),
            metadata=meta, extra_body={"tunelab": req["tunelab"]}, **body,
        )  # fmt: skip
        made.append({"variant": variant, "id": job.id, "status": job.status})
    return made


def rank(jobs: list[Any], *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Rank a sweep's succeeded jobs by their headline metric on the same held-out items: each against the base
    (its own paired test) and each against the best, all p-values Holm-adjusted within their family."""
    from tunelab.evaluate.compare import compare_runs
    from tunelab.evaluate.stats import holm

    done = [j for j in jobs if j.status == "succeeded" and (j.result or {}).get("comparison")]
    if not done:
        raise DataError("no succeeded job of this sweep has a comparison yet", field="--sweep")
    metric = done[0].result["comparison"]["metric"]
    rows = []
    for j in done:
        c = j.result["comparison"]
        if c["metric"] != metric:
            raise DataError(f"jobs score different metrics ({metric} vs {c['metric']}): not one eval set",
                            field="--sweep")  # fmt: skip
        rows.append({"job": j.id, "variant": (j.spec.get("metadata") or {}).get("variant", ""),
                     "model": j.fine_tuned_model, "base": c["base"], "tuned": c["tuned"], "delta": c["delta"],
                     "p_vs_base": c["p_value"]})  # fmt: skip
    for r, p in zip(rows, holm([r["p_vs_base"] for r in rows]), strict=True):
        r["p_vs_base_holm"] = p
    rows.sort(key=lambda r: -r["tuned"])
    best = next(j for j in done if j.id == rows[0]["job"])
    best_dir = Path(best.run_dir) / "eval" / "tuned"
    vs_best = []
    for r in rows[1:]:
        other = next(j for j in done if j.id == r["job"])
        cmp = compare_runs(Path(other.run_dir) / "eval" / "tuned", best_dir, resamples=resamples, seed=seed)
        row = next(x for x in cmp["paired"] if x["metric"] == metric)
        r["best_minus_this"] = row["delta"]
        vs_best.append(row["p_value"])
    for r, p in zip(rows[1:], holm(vs_best) if vs_best else [], strict=True):
        r["p_vs_best_holm"] = p
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return {"metric": metric, "n_jobs": len(jobs), "ranked": rows, "not_ranked": [
        {"job": j.id, "status": j.status} for j in jobs if j not in done]}  # fmt: skip
