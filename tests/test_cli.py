"""The CLI contract: exit codes, one-line messages, no traceback unless --debug, instant --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TUNELAB = [sys.executable, "-m", "tunelab"]


def run(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TUNELAB, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_help_imports_no_heavy_library() -> None:
    code = "import sys, tunelab.cli; print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = run("--help")
    assert res.returncode == 0 and "quickstart" in res.stdout


def test_unknown_model_path_is_one_line_exit_2(tmp_path: Path) -> None:
    res = run("quickstart", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines == [f"error: {tmp_path / 'missing'} [model]: no such model directory or file"]
    assert not (tmp_path / "run").exists()  # checked before anything is written


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    res = run("--debug", "quickstart", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "Traceback" in res.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_non_writable_out_is_exit_2(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    res = run("quickstart", "--out", str(ro / "run"))
    assert res.returncode == 2 and "--out" in res.stderr


def test_out_that_is_a_file_is_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    res = run("quickstart", "--out", str(f / "run"))
    assert res.returncode == 2
    assert "--out" in res.stderr and "Traceback" not in res.stderr


def test_unknown_config_key_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_stepz: 3\n")
    res = run("quickstart", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert res.stderr.strip() == f"error: {cfg} [train.max_stepz]: unknown key"


def test_bad_override_value_is_exit_2(tmp_path: Path) -> None:
    res = run("quickstart", "--set", "batch.size=zero", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "[batch.size]" in res.stderr


def test_report_on_an_unfinished_dir_is_exit_2(tmp_path: Path) -> None:
    res = run("report", str(tmp_path))
    assert res.returncode == 2 and "no summary.json" in res.stderr


def test_ctrl_c_exits_130_and_leaves_no_complete_looking_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            *TUNELAB,
            "quickstart",
            "--model",
            str(tiny_model_dir),
            "--out",
            str(out),
            "--max-steps",
            "100000",
            "--set",
            "data.max_words=12",
            "--set",
            "data.max_length=4096",
            "--set",
            "eval.limit=4",
            "--set",
            "eval.latency_samples=0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a test run started in the background (`make test &`) inherits SIGINT ignored, and Python then
        # never raises KeyboardInterrupt: give the child the default disposition, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    events = out / "events.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if events.exists() and '"train_step"' in events.read_text():
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:  # never leave the child running into the next test
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted"
    assert "Traceback" not in err
    assert not (out / "summary.json").exists()
    assert not (out / "model").exists()
    assert json.loads(events.read_text().splitlines()[-1])["event"] == "interrupted"


def test_an_unknown_command_is_a_usage_error_not_an_internal_one() -> None:
    res = run("no-such-command")
    assert res.returncode == 2
    assert "No such command" in res.stderr and "internal error" not in res.stderr
