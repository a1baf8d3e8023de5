"""Where the jobs service keeps things: `jobs.dir` of serve.yaml, default `$TUNELAB_HOME/jobs`."""

from __future__ import annotations

from pathlib import Path

from tunelab.paths import tunelab_home
from tunelab.serve.config import ServeConfig


def jobs_dir(cfg: ServeConfig) -> Path:
    return Path(cfg.jobs.dir) if cfg.jobs.dir else tunelab_home() / "jobs"


def files_dir(cfg: ServeConfig) -> Path:
    return jobs_dir(cfg) / "files"


def run_dir(cfg: ServeConfig, job_id: str) -> Path:
    return jobs_dir(cfg) / "runs" / job_id
