"""Run model-written code against its tests in a separate, limited process.

Layers (each one alone is not a security boundary; together they keep honest mistakes and the usual
escape routes of generated code out of the evaluating process):
- passed means the tests ran to their end: the runner then writes a nonce the program never sees to
  stdout, so an early `sys.exit(0)` is a failure, not a pass;
- a fresh interpreter (`python -I`: no user site, no PYTHON* variables), an empty temp working directory,
  a minimal environment, stdin closed, its own process group (killed whole on timeout);
- resource limits: CPU seconds, address space, file size, no new processes (RLIMIT_NPROC = 0);
- an audit hook installed before the program runs that refuses sockets, subprocesses, exec and fork;
- where the kernel allows unprivileged user namespaces (`unshare -rn`), a network namespace with no
  interfaces at all.
A crash, a timeout or a memory blow-up is a failed test, never a hang or a crash of tunelab.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

_RUNNER = r"""
import resource, runpy, sys
_nonce = sys.stdin.readline().strip()
cpu, mem, fsize = (int(x) for x in sys.argv[2:5])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
_BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.forkpty",
            "os.spawn", "pty.", "ctypes.dlopen", "os.kill", "os.killpg")
def _hook(event, args):
    if event.startswith(_BLOCKED) and event != "socket.gethostname":
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(_hook)
sys.argv = [sys.argv[1]]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    if e.code not in (None, 0):
        raise
    sys.stderr.write("sandbox: the program exited before its tests had run to the end\n")
    sys.exit(3)
sys.stdout.write("\n" + _nonce + "\n")
"""


@dataclass(frozen=True)
class RunResult:
    status: str  # passed | failed | timeout | error
    seconds: float
    detail: str  # last lines of stderr, or why it did not run

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def _netns_prefix() -> tuple[str, ...]:
    exe = shutil.which("unshare")
    if not exe:
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "-rn") if ok else ()


def network_isolated() -> bool:
    """Whether programs run in a network namespace of their own (else only the audit hook blocks sockets)."""
    return bool(_netns_prefix())


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 512, file_mb: int = 16) -> RunResult:
    """Run `source` as a script; passed = exit status 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="tunelab-sandbox-") as d:
        prog = os.path.join(d, "program.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(source)
        cmd = [
            *_netns_prefix(),
            sys.executable,
            "-I",
            "-c",
            _RUNNER,
            prog,
            str(max(1, int(timeout_s) + 1)),
            str(memory_mb << 20),
            str(file_mb << 20),
        ]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": d}
        nonce = secrets.token_hex(16)
        # output goes to files, which RLIMIT_FSIZE bounds (a pipe would let a print loop fill our memory)
        out_path, err_path = os.path.join(d, ".stdout"), os.path.join(d, ".stderr")
        t0 = time.perf_counter()
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            proc = subprocess.Popen(
                cmd, cwd=d, env=env, stdin=subprocess.PIPE, stdout=out_f, stderr=err_f, start_new_session=True
            )
            try:
                assert proc.stdin is not None
                proc.stdin.write(nonce.encode() + b"\n")
                proc.stdin.close()
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                return RunResult("timeout", time.perf_counter() - t0, f"no result within {timeout_s:g}s")
            except BrokenPipeError:
                proc.wait()
        seconds = time.perf_counter() - t0
        # the temp dir's random name would make two runs' reports differ
        tail = "\n".join(_tail(err_path).strip().splitlines()[-3:]).replace(d, "<sandbox>")
        if proc.returncode == 0 and _tail(out_path).rstrip().endswith(nonce):
            return RunResult("passed", seconds, "")
        if proc.returncode == 0:
            return RunResult("failed", seconds, "the program ended without running its tests to the end")
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            return RunResult("error", seconds, f"killed by {name} (a resource limit)" + (f": {tail}" if tail else ""))
        return RunResult("failed", seconds, tail)


def _tail(path: str, size: int = 4096) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - size))
        return f.read().decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def extract_code(text: str) -> str:
    """The code in a model's answer: the first fenced block if there is one, else the text itself."""
    import re

    m = re.search(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|\Z)", text, re.S)
    return m.group(1) if m else text


def program_for(prompt: str, completion: str, tests: str) -> str:
    """prompt + completion + tests; a completion that is a whole function (repeats the signature) replaces
    the prompt instead of following it."""
    code = extract_code(completion)
    first_def = next((ln.strip() for ln in prompt.splitlines() if ln.strip().startswith("def ")), None)
    body = code if first_def and first_def in code else prompt + code
    return f"{body}\n\n{tests}\n"
