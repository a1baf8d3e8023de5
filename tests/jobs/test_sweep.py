"""Sweeps: a grid becomes jobs tagged metadata.sweep, and `tunelab compare --sweep` ranks them, Holm-adjusted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.jobs.conftest import FAST, TUNELAB, Service, chat_rows, write_jsonl
from tunelab.errors import ConfigError
from tunelab.jobs.sweep import expand, load_sweep


def test_a_grid_crossed_with_variants_gives_one_request_per_combination(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntraining_file: t.jsonl\nbase: {tunelab: {max_steps: 3}}\n"
                 "grid:\n  tunelab.lora_rank: [4, 8]\n  method.supervised.hyperparameters.n_epochs: [1, 2]\n"
                 "variants:\n  lora: {}\n  full: {tunelab.kind: full}\n")  # fmt: skip
    jobs = expand(load_sweep(p))
    assert len(jobs) == 8
    names = [n for n, _ in jobs]
    assert names[0] == "lora,lora_rank=4,n_epochs=1" and names[-1] == "full,lora_rank=8,n_epochs=2"
    last = jobs[-1][1]
    assert last["tunelab"] == {"max_steps": 3, "kind": "full", "lora_rank": 8}
    assert last["method"]["supervised"]["hyperparameters"]["n_epochs"] == 2
    assert jobs[0][1]["tunelab"] == {"max_steps": 3, "lora_rank": 4}  # the base is copied, not shared


def test_a_bad_sweep_file_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("name: s\ntraining_file: t.jsonl\ngrids: {}\n")
    with pytest.raises(ConfigError, match="grids"):
        load_sweep(p)
    p.write_text("name: s\ntraining_file: t.jsonl\ngrid: {tunelab.lora_rank: 4}\n")
    with pytest.raises(ConfigError, match=r"grid\.tunelab\.lora_rank"):
        load_sweep(p)


def test_sweep_submits_jobs_and_compare_ranks_them(service: Service, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", chat_rows(30))
    write_jsonl(tmp_path / "valid.jsonl", chat_rows(10, offset=200))
    (tmp_path / "sweep.yaml").write_text(
        "name: ranks\ntraining_file: train.jsonl\nvalidation_file: valid.jsonl\nseed: 3\n"
        f"base: {{tunelab: {json.dumps(FAST)}}}\ngrid:\n  tunelab.lora_rank: [2, 8]\n"
    )
    env = {**service.env, "TUNELAB_API_KEY": service.keys["main"]}
    out = subprocess.run([*TUNELAB, "sweep", str(tmp_path / "sweep.yaml"), "--url", service.url], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    ids = [line.split()[0] for line in out.stdout.splitlines()]
    assert len(ids) == 2
    for jid in ids:
        assert service.wait(jid, ("succeeded", "failed")).status == "succeeded"
    listed = service.client().fine_tuning.jobs.list(metadata={"sweep": "ranks"})
    assert sorted(j.id for j in listed) == sorted(ids)
    out = subprocess.run([*TUNELAB, "compare", "--sweep", "ranks", "--store", str(service.home / "tunelab.db"),
                          "--json"], env=service.env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["metric"] == "accuracy" and [x["rank"] for x in r["ranked"]] == [1, 2]
    assert {x["variant"] for x in r["ranked"]} == {"lora_rank=2", "lora_rank=8"}
    assert r["ranked"][0]["tuned"] >= r["ranked"][1]["tuned"]
    assert all(0 <= x["p_vs_base_holm"] <= 1 for x in r["ranked"]) and "p_vs_best_holm" in r["ranked"][1]
