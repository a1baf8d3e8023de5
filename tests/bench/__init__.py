"""Benchmark tests: each runs `tunelab bench NAME ... --json --out DIR` as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_bench(name: str, out: Path, *args: str) -> dict[str, Any]:
    """Run the benchmark; it must exit 0 and print the same JSON it writes to `out/bench-NAME.json`."""
    res = subprocess.run(
        [sys.executable, "-m", "tunelab", "bench", name, *args, "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    r: dict[str, Any] = json.loads(res.stdout)
    assert r == json.loads((out / f"bench-{name}.json").read_text())
    return r
