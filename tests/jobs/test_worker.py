"""The worker's launch commands, and the job spec's mapping of OpenAI's hyperparameters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunelab.errors import ConfigError
from tunelab.jobs.spec import JobCreate, model_name, resolve, run_config
from tunelab.jobs.worker import Worker
from tunelab.serve.config import load_serve_config


def _worker(tmp_path: Path, jobs: str) -> Worker:
    (tmp_path / "serve.yaml").write_text(f"store: {tmp_path / 'db.sqlite'}\njobs: {jobs}\n")
    return Worker(load_serve_config(tmp_path / "serve.yaml"))


def test_launchers_build_the_commands_they_say(tmp_path: Path) -> None:
    args = ["train", "--resume", "/runs/j"]
    assert _worker(tmp_path, "{}")._training_command(args) == [sys.executable, "-m", "tunelab", *args]
    tr = _worker(tmp_path, "{launcher: torchrun, nproc_per_node: 4}")._training_command(args)
    assert tr[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert tr[6:] == ["-m", "tunelab", *args]
    t = _worker(tmp_path, "{launcher: template, launch_template: 'srun --gres gpu:2 {cmd}', template_torchrun: true}")
    cmd = t._training_command(args)
    assert cmd[:2] == ["/bin/sh", "-c"] and cmd[2].startswith("srun --gres gpu:2 ")
    assert "torch.distributed.run" in cmd[2]
    with pytest.raises(ConfigError, match="launch_template"):
        _worker(tmp_path, "{launcher: template}")


def test_openai_hyperparameters_map_onto_steps_batch_and_learning_rate() -> None:
    req = JobCreate(model="m", training_file="file-1", method={"type": "supervised", "supervised": {
        "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}}})  # fmt: skip
    hp = resolve(req, n_train=10)
    assert hp == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5, "steps": 8}  # ceil(30 / 4)
    spec = {"id": "ftjob-x", "seed": 9, "method": {"type": "supervised"}, "hyperparameters": hp,
            "tunelab": req.tunelab.model_dump(), "base_spec": None}  # fmt: skip
    cfg = run_config(spec, Path("/d/train.jsonl"), None)
    assert cfg.train.max_steps == 8 and cfg.batch.size == 4 and cfg.optimizer.lr == pytest.approx(2.5e-4)
    assert cfg.train.seed == 9 and cfg.checkpoint.every == 2 and cfg.method.kind == "lora" and cfg.method.r == 16
    auto = resolve(JobCreate(model="m", training_file="f", hyperparameters={"n_epochs": "auto"}), n_train=20)
    assert auto["n_epochs"] == 1 and auto["batch_size"] == 8 and auto["steps"] == 3
    dpo = JobCreate(model="m", training_file="f", method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}})
    assert resolve(dpo, 8)["beta"] == 0.3
    assert model_name("smollm2-135m-instruct", "Team A", "bbc", "ftjob-0123456789ab") == (
        "ft:smollm2-135m-instruct:team-a:bbc:01234567"
    )
