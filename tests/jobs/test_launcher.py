"""The worker's torchrun launcher: a job trained by 2 processes (DDP over gloo) through the jobs API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.jobs.conftest import FAST, Service, chat_rows, write_jsonl


@pytest.mark.slow
def test_a_job_trains_under_torchrun_with_two_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    svc = Service(tmp_path / "home", tiny_model_dir)
    (svc.home / "serve.yaml").write_text(
        "max_context: 256\nmax_tokens: 32\njobs:\n  poll_s: 0.2\n  launcher: torchrun\n  nproc_per_node: 2\n"
    )
    svc.key("main")
    svc.start()
    try:
        c = svc.client()
        with open(write_jsonl(tmp_path / "t.jsonl", chat_rows(30)), "rb") as f:
            fid = c.files.create(file=f, purpose="fine-tune").id
        job = c.fine_tuning.jobs.create(model="tiny-llama", training_file=fid, seed=1,
                                        hyperparameters={"batch_size": 4}, extra_body={"tunelab": FAST})  # fmt: skip
        done = svc.wait(job.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        summary = json.loads((Path(done.tunelab["run_dir"]) / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["global_batch"] == 4
        started = [e for e in c.fine_tuning.jobs.list_events(job.id, limit=100) if e.message.startswith("Training")]
        assert any(e.data and e.data.get("processes") == 2 for e in started)
    finally:
        svc.stop()
