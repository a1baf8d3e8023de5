"""Exact resume of jobs: kill -9 of the whole server mid-job, kill -9 of its worker alone, and pause/resume
all end with the adapter an uninterrupted run of the same job gives, tensor for tensor."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.conftest import FAST, Service, chat_rows, write_jsonl

LONG = {**FAST, "max_steps": 600, "checkpoint_every": 10, "eval_limit": 2}


def _job(c: Any, fid: str) -> Any:
    return c.fine_tuning.jobs.create(model="tiny-llama", training_file=fid, seed=11, extra_body={"tunelab": LONG})


def _first_checkpoint(run_dir: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*/MANIFEST")):
            return
        time.sleep(0.02)
    raise AssertionError("no checkpoint was written")


def _adapter(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model" / "adapter_model.safetensors"))


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill9_of_the_server_or_the_worker_and_pause_resume_to_the_uninterrupted_adapter(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "home").mkdir()
    svc = Service(tmp_path / "home", tiny_model_dir)
    svc.key("main")
    data = write_jsonl(tmp_path / "train.jsonl", chat_rows(40))
    svc.start()
    try:
        c = svc.client()
        with open(data, "rb") as f:
            fid = c.files.create(file=f, purpose="fine-tune").id
        killed = _job(c, fid)
        run_dir = Path(killed.tunelab["run_dir"])
        _first_checkpoint(run_dir)
        svc.kill9()  # the server, its worker and the training process go at once
        svc.start()
        c = svc.client()
        done = svc.wait(killed.id, ("succeeded", "failed"))
        assert done.status == "succeeded", done.error
        msgs = [e.message for e in c.fine_tuning.jobs.list_events(killed.id, limit=1000)]
        assert any(m.startswith("The worker restarted") for m in msgs)
        assert any(m.startswith("Resuming training from the checkpoint at step") for m in msgs)

        worker_killed = _job(c, fid)  # now the worker alone: the server starts it again, the job goes on
        wdir = Path(worker_killed.tunelab["run_dir"])
        _first_checkpoint(wdir)
        assert svc.proc is not None
        [worker] = [int(p) for p in Path(f"/proc/{svc.proc.pid}/task/{svc.proc.pid}/children").read_text().split()]
        os.kill(worker, signal.SIGKILL)
        assert svc.wait(worker_killed.id, ("succeeded", "failed")).status == "succeeded"
        msgs = [e.message for e in c.fine_tuning.jobs.list_events(worker_killed.id, limit=1000)]
        assert any(m.startswith("Resuming training from the checkpoint at step") for m in msgs)

        paused = _job(c, fid)
        pdir = Path(paused.tunelab["run_dir"])
        svc.wait(paused.id, ("running",))
        _first_checkpoint(pdir)
        assert c.fine_tuning.jobs.pause(paused.id).status == "paused"
        time.sleep(1.0)
        assert c.fine_tuning.jobs.retrieve(paused.id).status == "paused"
        assert c.fine_tuning.jobs.resume(paused.id).status == "queued"
        assert svc.wait(paused.id, ("succeeded", "failed")).status == "succeeded"

        reference = _job(c, fid)
        assert svc.wait(reference.id, ("succeeded", "failed")).status == "succeeded"
        ref = _adapter(Path(reference.tunelab["run_dir"]))
        assert _same(_adapter(run_dir), ref), "the job killed mid-way ended with another adapter"
        assert _same(_adapter(pdir), ref), "the paused job ended with another adapter"
        assert _same(_adapter(wdir), ref), "the job whose worker was killed ended with another adapter"
    finally:
        svc.stop()
