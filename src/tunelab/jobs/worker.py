"""`tunelab worker`: takes queued jobs from the store and runs each stage as a child process of its own.

A job goes prepare (data into its run directory, in the worker) -> train (`tunelab train`, or `--resume` when
the run has a checkpoint) -> eval (`python -m tunelab.jobs.evaluate`) -> succeeded. The children write the
run directory's `events.jsonl`; the worker turns its lines into job events and checkpoints as they come, so
the API process never waits on training, and a crash of training is a failed job, not a dead server.

- One worker per store: it holds an exclusive lock on `<jobs dir>/worker.lock` (a second one waits for it).
- Children die with the worker (PR_SET_PDEATHSIG) and run in a process group of their own, so a cancel or a
  pause kills all of them (torchrun's too) within `poll_s` plus a few seconds of grace.
- After a crash (kill -9 of the worker or of `tunelab serve`), the next worker finds the jobs still marked
  running and continues them: training resumes from its last checkpoint through the exact-resume path, so
  the final adapter equals an uninterrupted run's; a finished stage is not redone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunelab.fsutil import atomic_dir, atomic_write_json, atomic_write_text, read_json_object, sha256_file
from tunelab.jobs import export_task
from tunelab.jobs.export_store import ExportRow, ExportStore
from tunelab.jobs.paths import files_dir, jobs_dir
from tunelab.jobs.prepare import prepare
from tunelab.jobs.spec import run_config
from tunelab.jobs.store import FileRow, JobRow, JobStore, new_id
from tunelab.serve.config import ServeConfig
from tunelab.serve.store import Store

GRACE_S = 5.0


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the worker goes, however it goes (Linux)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Task:
    job_id: str
    phase: str
    proc: subprocess.Popen[bytes] | None
    log: Any = None


class Worker:
    def __init__(self, cfg: ServeConfig, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.store = Store(cfg.store)
        self.jobs = JobStore(self.store)
        self.exports = ExportStore(self.store)
        self.dir = jobs_dir(cfg)
        self.tasks: dict[str, Task] = {}
        self.log = log or (lambda m: print(m, file=sys.stderr, flush=True))
        self._lock: Any = None

    # --- the loop -----------------------------------------------------------------------------------------

    def lock(self) -> None:
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "worker.lock", "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.log(f"another worker holds {self.dir / 'worker.lock'}; waiting for it to stop")
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.lock()
        self.log(f"worker: jobs in {self.dir}, {self.cfg.jobs.concurrency} at a time, launcher "
                 f"{self.cfg.jobs.launcher}")  # fmt: skip
        for job in self.jobs.running():  # left running by a worker that died: ours now (we hold the lock)
            self._kill_leftover(Path(job.run_dir))
            self.jobs.event(job.id, f"The worker restarted; continuing the {job.phase} stage")
            self._start(job)
        for e in self.exports.running():  # its child died with that worker: from the start again
            self.exports.set(e.id, ("running",), status="queued")
        try:
            while not should_stop():
                try:
                    self._tick()
                except Exception as e:  # a busy store, a full disk: say so and try again, do not drop the jobs
                    self.log(f"worker: {type(e).__name__}: {e} (retrying)")
                time.sleep(self.cfg.jobs.poll_s)
        finally:
            for jid in list(self.tasks):
                self._stop_children(self.tasks.pop(jid))

    def _tick(self) -> None:
        for jid in list(self.tasks):
            self._poll(jid)
        while len(self.tasks) < self.cfg.jobs.concurrency:
            claimed = self.jobs.claim(set(self.tasks))
            if claimed is None:
                break
            self._start(claimed)
        while len(self.tasks) < self.cfg.jobs.concurrency:
            export = self.exports.claim()
            if export is None:
                break
            self._start_export(export)

    # --- one job ------------------------------------------------------------------------------------------

    def _start(self, job: JobRow) -> None:
        run_dir = Path(job.run_dir)
        try:
            if job.phase == "train" and not (run_dir / "job.yaml").is_file():
                self._prepare(job, run_dir)
            self._launch(job.id, job.phase, run_dir)
        except Exception as e:  # bad data or config found while preparing: the job fails, the worker goes on
            self._fail(job.id, "invalid_training_file" if "data" in type(e).__name__.lower() else "job_error", str(e))

    def _prepare(self, job: JobRow, run_dir: Path) -> None:
        spec = job.spec
        tf = self.jobs.file(spec["training_file"])
        vf = self.jobs.file(spec["validation_file"]) if spec.get("validation_file") else None
        if tf is None or (spec.get("validation_file") and vf is None):
            raise ValueError("a file of this job was deleted before it started")
        run_dir.mkdir(parents=True, exist_ok=True)
        done = prepare(run_dir, spec, vars(tf), vars(vf) if vf else None)
        counts = {"train_records": done["train_records"], "eval_records": done["eval_records"]}
        self.jobs.event(job.id, f"Files validated: {counts['train_records']} training records; {done['how']}",
                        data=counts)
        cfg = run_config(spec, Path(done["train"]), Path(done["eval"]) if done["eval"] else None)
        atomic_write_json(run_dir / "job.json", spec)
        atomic_write_text(run_dir / "job.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))

    def _launch(self, jid: str, phase: str, run_dir: Path) -> None:
        if phase == "train" and (run_dir / "summary.json").is_file():
            phase = "eval"
        if phase == "eval" and (not (run_dir / "data" / "eval.jsonl").is_file()
                                or (run_dir / "eval" / "verdict.json").is_file()):  # fmt: skip
            phase = "finish"
        self.jobs.update(jid, phase=phase)
        if phase == "finish":
            self._finish(jid, run_dir)
            return
        py = sys.executable
        if phase == "train":
            from tunelab.train.checkpoint import latest_good

            found = latest_good(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
            args = ["train", "--resume", str(run_dir)] if found else ["train", str(run_dir / "job.yaml"), "--out",
                                                                       str(run_dir)]  # fmt: skip
            if found:
                self.jobs.event(jid, f"Resuming training from the checkpoint at step {found.step}")
            elif json.loads((run_dir / "job.json").read_text())["tunelab"].get("force"):
                args.append("--force")
            cmd = self._training_command(args)
        else:
            cmd = [py, "-m", "tunelab.jobs.evaluate", str(run_dir)]
        log = open(run_dir / "worker.log", "ab")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                process_group=0, preexec_fn=_die_with_parent)  # fmt: skip
        (run_dir / "worker.pid").write_text(str(proc.pid))
        self.tasks[jid] = Task(jid, phase, proc, log)
        self.log(f"{jid}: {phase} started (pid {proc.pid})")

    def _training_command(self, args: list[str]) -> list[str]:
        j = self.cfg.jobs
        py = sys.executable
        torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(j.nproc_per_node),
                    "-m", "tunelab", *args]  # fmt: skip
        local = [py, "-m", "tunelab", *args]
        if j.launcher == "torchrun":
            return torchrun
        if j.launcher == "template":
            import shlex

            inner = shlex.join(torchrun if j.template_torchrun else local)
            return ["/bin/sh", "-c", (j.launch_template or "{cmd}").replace("{cmd}", inner)]
        return local

    def _poll(self, jid: str) -> None:
        task = self.tasks[jid]
        if task.phase == "export":
            self._poll_export(task)
            return
        job = self.jobs.job(jid)
        if job is None:
            self._stop_children(self.tasks.pop(jid))
            return
        run_dir = Path(job.run_dir)
        self._tail(job, run_dir)
        if job.status != "running":  # cancelled or paused through the API
            self._stop_children(self.tasks.pop(jid))
            what = "cancelled" if job.status == "cancelled" else "paused (resume continues from the last checkpoint)"
            self.jobs.event(jid, f"The job was {what}; its processes were stopped")
            return
        assert task.proc is not None
        rc = task.proc.poll()
        if rc is None:
            return
        self.tasks.pop(jid)
        task.log.close()
        self._tail(self.jobs.job(jid) or job, run_dir)  # the last lines, written as the child ended
        if rc == 0:
            self._launch(jid, "eval" if task.phase == "train" else "finish", run_dir)
            return
        why, code = self._why_failed(run_dir, rc, task.phase)
        self._fail(jid, code, why)

    def _stop_children(self, task: Task) -> None:
        p = task.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if task.log:
            task.log.close()

    def _kill_leftover(self, run_dir: Path) -> None:
        """A child group of a worker that died without taking it along (torchrun's grandchildren)."""
        try:
            pid = int((run_dir / "worker.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(run_dir).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def _why_failed(self, run_dir: Path, rc: int, phase: str) -> tuple[str, str]:
        msg = None
        for ev in _read_events(run_dir, 0)[0]:
            if ev.get("event") == "failed":
                msg = ev.get("error")
        if msg is None:
            try:
                tail = (run_dir / "worker.log").read_bytes()[-2000:].decode("utf-8", "replace").strip().splitlines()
                msg = next((ln for ln in reversed(tail) if ln.startswith("error")), tail[-1] if tail else None)
            except OSError:
                pass
        code = "audit_failed" if rc == 1 and phase == "train" else f"{phase}_failed"
        return f"{phase} stopped with exit code {rc}: {msg or 'no message'}", code

    def _fail(self, jid: str, code: str, message: str) -> None:
        self.jobs.transition(jid, ("running",), status="failed", finished_at=int(time.time()),
                             error={"code": code, "message": message[:2000], "param": None})  # fmt: skip
        self.jobs.event(jid, f"The job failed: {message[:500]}", level="error")
        self.log(f"{jid}: failed: {message[:300]}")

    # --- exports ------------------------------------------------------------------------------------------

    def _start_export(self, e: ExportRow) -> None:
        job = self.jobs.job(e.job_id)
        if job is None or job.status != "succeeded":
            self.exports.set(e.id, ("running",), status="failed", finished_at=int(time.time()),
                             error={"code": "export_failed", "message": "the job has no model to export"})  # fmt: skip
            return
        Path(e.out_dir).parent.mkdir(parents=True, exist_ok=True)
        log = open(Path(e.out_dir).parent / f"{e.id}.log", "ab")  # noqa: SIM115
        cmd = export_task.command(e, Path(job.run_dir), self.cfg.jobs.export_items)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, process_group=0,
                                preexec_fn=_die_with_parent)  # fmt: skip
        self.tasks[e.id] = Task(e.id, "export", proc, log)
        self.jobs.event(e.job_id, f"Export started: {e.id}", data={"export": e.id})
        self.log(f"{e.id}: export of {e.job_id} started (pid {proc.pid})")

    def _poll_export(self, task: Task) -> None:
        assert task.proc is not None
        rc = task.proc.poll()
        if rc is None:
            return
        self.tasks.pop(task.job_id)
        task.log.close()
        e = self.exports.get(task.job_id)
        if e is None:
            return
        status, values = export_task.outcome(e, rc)
        self.exports.set(e.id, ("running",), status=status, finished_at=int(time.time()), **values)
        if status == "succeeded":
            self.jobs.event(e.job_id, f"Export {e.id} is ready to download: every parity gate passed",
                            data={"export": e.id})  # fmt: skip
        else:
            self.jobs.event(e.job_id, f"Export {e.id} failed: {values['error']['message'][:500]}", level="error",
                            data={"export": e.id})  # fmt: skip
        self.log(f"{e.id}: {status}")

    # --- events and checkpoints ---------------------------------------------------------------------------

    def _tail(self, job: JobRow, run_dir: Path) -> None:
        events, offset = _read_events(run_dir, job.events_offset)
        if offset == job.events_offset:
            return
        for ev in events:
            self._event(job, run_dir, ev)
        self.jobs.update(job.id, events_offset=offset)

    def _event(self, job: JobRow, run_dir: Path, ev: dict[str, Any]) -> None:
        kind, jid = ev.get("event"), job.id
        if kind == "train_start":
            start = f" (from step {ev['start_step']})" if ev.get("start_step") else ""
            keys = ("examples", "steps", "method", "precision", "processes")
            self.jobs.event(jid, f"Training started: {ev['examples']} examples, {ev['steps']} steps{start}",
                            data={k: ev.get(k) for k in keys})  # fmt: skip
        elif kind == "train_step":
            total = job.spec["hyperparameters"]["steps"]
            data = {"step": ev["step"], "train_loss": ev["loss"], "total_steps": total, "lr": ev.get("lr"),
                    "elapsed_s": ev.get("elapsed_s")}  # fmt: skip
            self.jobs.event(jid, f"Step {ev['step']}/{total}: training loss={ev['loss']:.4f}", type="metrics",
                            data=data)  # fmt: skip
            if ev.get("elapsed_s") and ev["step"]:
                left = float(ev["elapsed_s"]) / int(ev["step"]) * (int(total) - int(ev["step"]))
                self.jobs.update(jid, estimated_finish=int(time.time() + left))
        elif kind == "checkpoint":
            self._checkpoint(job, run_dir, int(ev["step"]))
        elif kind == "info" and str(ev.get("message", "")).startswith("audit:"):
            audit = read_json_object(run_dir / "audit" / "audit.json")
            self.jobs.event(jid, "Data audit: " + str(ev["message"])[len("audit:"):].strip(),
                            level="info" if (audit or {}).get("verdict") != "fail" else "warn",
                            data={k: (audit or {}).get(k) for k in ("verdict", "reasons", "warnings", "records_valid",
                                                                     "quarantined")})  # fmt: skip
        elif kind == "done":
            s = ev.get("summary") or {}
            self.jobs.update(jid, trained_tokens=s.get("trained_tokens"))
            valid = f", validation loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else ""
            self.jobs.event(jid, f"Training finished: final loss {s.get('final_loss', float('nan')):.4f}{valid}",
                            data={k: s.get(k) for k in ("final_loss", "eval_loss", "trained_tokens", "train_s",
                                                         "tokens_per_s", "audit_verdict")})  # fmt: skip
        elif kind == "eval_start":
            self.jobs.event(jid, f"Evaluating the {ev['side']} model on {ev['items']} held-out examples "
                                 f"({ev['task']})")  # fmt: skip
        elif kind == "eval_done":
            result = ev.get("result") or {}
            self.jobs.event(jid, str(result.get("verdict")), data=result)
        elif kind == "failed":
            self.jobs.event(jid, f"Error: {ev.get('error')}", level="error")

    def _checkpoint(self, job: JobRow, run_dir: Path, step: int) -> None:
        src = run_dir / "checkpoints" / f"step-{step:06d}" / "adapter"
        dst = run_dir / "job-checkpoints" / f"step-{step:06d}"
        if not src.is_dir():  # full fine-tuning: checkpoints resume, but are not servable adapters
            return
        if not dst.is_dir():
            try:
                with atomic_dir(dst) as tmp:
                    for f in src.iterdir():
                        shutil.copy2(f, tmp / f.name)
            except OSError:  # pruned before we copied it (a later checkpoint exists)
                return
        curve = {r["step"]: r for r in _jsonl(run_dir / "train" / "curve.jsonl")}
        metrics = {"step": step, "train_loss": curve.get(step, {}).get("loss")}
        name = f"{job.spec['fine_tuned_model']}:ckpt-step-{step}"
        if self.jobs.add_checkpoint(job.id, step, name, str(dst), metrics):
            self.jobs.event(job.id, f"Checkpoint created at step {step}: {name}", data={"step": step, "model": name})

    # --- the end ------------------------------------------------------------------------------------------

    def _finish(self, jid: str, run_dir: Path) -> None:
        job = self.jobs.job(jid)
        assert job is not None
        summary = read_json_object(run_dir / "summary.json") or {}
        verdict = read_json_object(run_dir / "eval" / "verdict.json")
        results = self._results_file(job, run_dir, summary)
        result = {"summary": {k: summary.get(k) for k in ("final_loss", "eval_loss", "trained_tokens", "train_s",
                                                          "tokens_per_s", "audit_verdict", "forced", "steps")},
                  "comparison": verdict, "run_dir": str(run_dir)}  # fmt: skip
        ok = self.jobs.transition(jid, ("running",), status="succeeded", finished_at=int(time.time()),
                                  fine_tuned_model=job.spec["fine_tuned_model"], result=result,
                                  result_files=[results], trained_tokens=summary.get("trained_tokens"),
                                  estimated_finish=None)  # fmt: skip
        if ok:
            if verdict is None:
                self.jobs.event(jid, "No held-out examples: the base-vs-tuned comparison was skipped", level="warn")
            self.jobs.event(jid, f"The job has successfully completed: {job.spec['fine_tuned_model']}")
            self.log(f"{jid}: succeeded")

    def _results_file(self, job: JobRow, run_dir: Path, summary: dict[str, Any]) -> str:
        """OpenAI's step metrics CSV (step, train_loss, train_accuracy, valid_loss, valid_mean_token_accuracy)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
        curve = _jsonl(run_dir / "train" / "curve.jsonl")
        for i, r in enumerate(curve):
            last = i == len(curve) - 1
            valid = summary.get("eval_loss") if last else None
            w.writerow([r["step"], f"{r['loss']:.6f}", "", f"{valid:.6f}" if valid is not None else "", ""])
        fid = new_id("file")
        path = files_dir(self.cfg) / f"{fid}.csv"
        atomic_write_text(path, buf.getvalue())
        row = FileRow(fid, job.owner, "fine-tune-results", "step_metrics.csv", path.stat().st_size,
                      int(time.time()), str(path), sha256_file(path), "csv", len(curve), None)  # fmt: skip
        self.jobs.add_file(row)
        return fid


def _read_events(run_dir: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """Complete lines of events.jsonl from byte `offset`; the offset after the last complete line."""
    try:
        with open(run_dir / "events.jsonl", "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    out = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out, offset + end



def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return []
