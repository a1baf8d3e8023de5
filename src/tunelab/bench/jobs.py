"""`tunelab bench jobs`: the jobs service's own costs, measured on a real server, worker and model.

- submit_to_running_s: from sending the create request to the job read back as running (the queue's
  overhead: the create call, the worker's poll, the claim);
- api_p99_ms (and p50): list and retrieve latency for 8 concurrent clients while a second job trains on the
  same CPU;
- resume_exact: a third job, identical, whose server is killed with SIGKILL after its first checkpoint and
  started again, ends with the same adapter tensors as the first;
- service_overhead: the first (quiet) job's wall time against `tunelab train` + the same evaluation run directly
  (`tunelab train JOB.yaml` then `python -m tunelab.jobs.evaluate`) in the same run: the peer here is
  tunelab without the service.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunelab.bench.serve import _free_port, _start
from tunelab.evaluate.metrics import percentile
from tunelab.fsutil import atomic_write_json


def bench_jobs(
    out: Path, *, model: str | None = None, steps: int = 8, clients: int = 8, log: Callable[[str], None] = print
) -> dict[str, Any]:
    import openai

    from tunelab.data.tasks import build_bbc_topics

    out.mkdir(parents=True, exist_ok=True)
    data = build_bbc_topics(out / "bbc", seed=0, eval_per_class=4, max_words=48)
    train = out / "train.jsonl"
    lines = data.train.read_text().splitlines()[:64]
    train.write_text("\n".join(lines) + "\n")
    cfg = out / "serve.yaml"
    cfg.write_text(json.dumps({"store": str(out / "tunelab.db"), "jobs": {"dir": str(out / "jobs")}}))
    env = {**os.environ}
    key = json.loads(subprocess.run(
        [sys.executable, "-m", "tunelab", "keys", "create", "--name", "bench", "--store", str(out / "tunelab.db"),
         "--json"], capture_output=True, text=True, check=True, env=env).stdout)["key"]  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "tunelab", "serve", "--port", str(port), "--config", str(cfg)]
    if model:
        cmd += ["--model", model]
    proc = _start(cmd, env, url, out / "serve.log")
    c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    base = c.models.list().data[0].id
    extras = {"max_steps": steps, "checkpoint_every": max(1, steps // 4), "eval_limit": 20,
              "eval_max_new_tokens": 8}  # fmt: skip
    try:
        with open(train, "rb") as f:
            fid = c.files.create(file=f, purpose="fine-tune").id
        with open(data.eval, "rb") as f:
            vid = c.files.create(file=f, purpose="fine-tune").id

        def create() -> Any:
            return c.fine_tuning.jobs.create(model=base, training_file=fid, validation_file=vid, seed=5,
                                             extra_body={"tunelab": extras})  # fmt: skip

        t_job = time.perf_counter()  # from sending the create request to the job read back as running
        job = create()
        while c.fine_tuning.jobs.retrieve(job.id).status == "queued":
            time.sleep(0.02)
        submit_to_running = time.perf_counter() - t_job
        log(f"submit -> running: {submit_to_running:.2f} s")
        first = _wait(c, job.id, poll=2.0)  # a quiet job: its wall time is compared with the direct run's
        job_s = time.perf_counter() - t_job
        log(f"job {first.status} in {job_s:.1f} s: {(first.tunelab['comparison'] or {}).get('verdict')}")

        loaded = create()
        while c.fine_tuning.jobs.retrieve(loaded.id).status == "queued":
            time.sleep(0.05)
        lat = _api_load(url, key, loaded.id, clients,
                        lambda: c.fine_tuning.jobs.retrieve(loaded.id).status == "running")  # fmt: skip
        log(f"list/retrieve under {clients} clients while a job trains: p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms ({lat['requests']} requests)")  # fmt: skip
        _wait(c, loaded.id)

        second = create()
        run2 = Path(second.tunelab["run_dir"])
        while not any((run2 / "checkpoints").glob("step-*/MANIFEST")):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log("killed the server (SIGKILL) after the third job's first checkpoint; starting it again")
        proc = _start(cmd, env, url, out / "serve-2.log")
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        again = _wait(c, second.id)
        exact = again.status == "succeeded" and _same_adapter(Path(first.tunelab["run_dir"]), run2)
        log(f"resumed job {again.status}; adapter equal to the uninterrupted one: {exact}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    direct_s = _direct(Path(first.tunelab["run_dir"]), out / "direct")
    log(f"the same training and evaluation without the service: {direct_s:.1f} s (the job: {job_s:.1f} s)")
    result = {
        "model": base, "steps": steps, "clients": clients,
        "submit_to_running_s": round(submit_to_running, 3),
        "api_p50_ms": lat["p50_ms"], "api_p99_ms": lat["p99_ms"], "api_requests": lat["requests"],
        "job_s": round(job_s, 1), "direct_s": round(direct_s, 1), "service_overhead": round(job_s / direct_s, 3),
        "resume_exact": exact, "first_status": first.status, "comparison": first.tunelab["comparison"],
    }  # fmt: skip
    atomic_write_json(out / "bench-jobs.json", result)
    return result


def _wait(c: Any, jid: str, timeout: float = 7200, poll: float = 0.5) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = c.fine_tuning.jobs.retrieve(jid)
        if j.status in ("succeeded", "failed", "cancelled"):
            return j
        time.sleep(poll)
    raise RuntimeError(f"job {jid} did not finish in {timeout} s")


def _api_load(url: str, key: str, jid: str, clients: int, training: Callable[[], bool]) -> dict[str, Any]:
    """Each client alternates list and retrieve until the job stops training (at most 60 s)."""
    import httpx

    times: list[float] = []
    lock = threading.Lock()
    stop = time.time() + 60
    h = {"Authorization": f"Bearer {key}"}

    def client() -> None:
        with httpx.Client(base_url=url, headers=h, timeout=30) as s:
            i = 0
            while time.time() < stop and not done.is_set():
                t = time.perf_counter()
                r = s.get("/v1/fine_tuning/jobs" if i % 2 else f"/v1/fine_tuning/jobs/{jid}")
                dt = (time.perf_counter() - t) * 1000
                r.raise_for_status()
                with lock:
                    times.append(dt)
                i += 1

    done = threading.Event()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    while time.time() < stop and training():
        time.sleep(0.5)
    done.set()
    for t in threads:
        t.join()
    return {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2),
            "requests": len(times)}  # fmt: skip


def _same_adapter(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x = load_file(str(a / "model" / "adapter_model.safetensors"))
    y = load_file(str(b / "model" / "adapter_model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _direct(job_run: Path, out: Path) -> float:
    """`tunelab train` on the job's own config, then the job's evaluation, timed as one."""
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunelab", "train", str(job_run / "job.yaml"), "--out", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    shutil.copy(job_run / "job.json", out / "job.json")
    subprocess.run([sys.executable, "-m", "tunelab.jobs.evaluate", str(out)], check=True, capture_output=True)
    return time.perf_counter() - t
