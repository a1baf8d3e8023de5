"""`tunelab ui`: the web app with a first admin key made (and printed once) when the store has none."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.jobs.conftest import TUNELAB, free_port, httpx


def test_ui_makes_a_first_admin_key_and_serves_the_pages(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "TUNELAB_HOME": str(tmp_path)}
    proc = subprocess.Popen([*TUNELAB, "ui", "--no-open", "--model", str(tiny_model_dir), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        key = lines[1].strip()
        assert "admin key was made" in lines[0] and key.startswith("tl-")
        assert lines[2].strip() == f"web app: http://127.0.0.1:{port}/"
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with httpx.Client(base_url=url, timeout=30) as b:
            assert b.post("/signin", data={"key": key}).status_code == 303
            assert "Keys" in b.get("/runs").text  # an admin: the keys page is in the menu
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()
    second = subprocess.run([*TUNELAB, "keys", "list", "--json"], env=env, capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.count('"admin": true') == 1
