"""Every file in configs/ starts with the command that runs it, and every tunelab config validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunelab.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_its_command_and_parses(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith(("# tunelab ", "# accelerate launch ", "# torchrun ")), first
    assert path.name in first or "configs/" in first
    if "accelerate" in path.parts:
        assert isinstance(yaml.safe_load(path.read_text()), dict)
    elif path.name == "serve.yaml":
        from tunelab.serve.config import load_serve_config

        assert load_serve_config(path).max_batch >= 1
    elif path.name == "sweep.yaml":
        from tunelab.jobs.sweep import expand, load_sweep

        assert len(expand(load_sweep(path))) == 8
    else:
        load_config(path)
