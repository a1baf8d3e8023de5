"""A real `tunelab serve` (with its worker) on loopback over a tiny model, keys for three owners, and data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
TUNELAB = [sys.executable, "-m", "tunelab"]
TOPICS = {
    "business": "The market rallied as shares of the bank rose sharply on strong profits.",
    "sport": "The striker scored twice as the team won the cup final on Saturday.",
    "politics": "The minister said the government would publish the bill next week.",
    "entertainment": "The film won three awards and the actor thanked the director.",
    "tech": "The new phone has a faster chip and software for mobile games.",
}
# fast and deterministic on any CPU: fp32 (no kernel to compile), a few steps, short answers
FAST = {"max_steps": 4, "checkpoint_every": 2, "eval_max_new_tokens": 4, "set": ["train.precision=fp32"]}


def chat_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    topics = list(TOPICS)
    rows = []
    for i in range(offset, offset + n):
        t = topics[i % len(topics)]
        rows.append({"messages": [{"role": "user", "content": f"{TOPICS[t]} (item {i})"},
                                  {"role": "assistant", "content": t}]})  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, home: Path, model: Path) -> None:
        self.home, self.model = home, model
        self.env = {**os.environ, "TUNELAB_HOME": str(home)}
        self.keys: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.clients: dict[str, Any] = {}
        self.url = ""
        (home / "serve.yaml").write_text("max_context: 256\nmax_tokens: 32\njobs:\n  poll_s: 0.2\n")

    def key(self, name: str, *extra: str) -> str:
        out = subprocess.run([*TUNELAB, "keys", "create", "--name", name, *extra, "--json"], capture_output=True,
                             text=True, env=self.env, check=True)  # fmt: skip
        self.keys[name] = json.loads(out.stdout)["key"]
        return self.keys[name]

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.home / f"serve-{port}.log", "wb") as log:  # the child keeps its own copy of the handle
            self.proc = subprocess.Popen(
                [*TUNELAB, "serve", "--model", str(self.model), "--port", str(port), "--config",
                 str(self.home / "serve.yaml")], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
            assert self.proc.poll() is None, (self.home / f"serve-{port}.log").read_text()
        raise AssertionError("the server did not start")

    def client(self, name: str = "main") -> Any:
        if (name, self.url) not in self.clients:
            self.clients[(name, self.url)] = openai.OpenAI(base_url=self.url + "/v1", api_key=self.keys[name],
                                                           max_retries=0, timeout=60)  # fmt: skip
        return self.clients[(name, self.url)]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def wait(self, job_id: str, states: tuple[str, ...], timeout: float = 300, name: str = "main") -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline:
            j = self.client(name).fine_tuning.jobs.retrieve(job_id)
            if j.status in states:
                return j
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still {j.status} after {timeout} s")


@pytest.fixture(scope="module")
def service(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("jobs-home"), tiny_model_dir)
    svc.key("main")
    svc.key("other")
    svc.key("admin", "--admin")
    svc.start()
    yield svc
    svc.stop()
