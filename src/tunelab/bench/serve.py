"""`tunelab bench serve`: `tunelab serve` vs a plain one-request-at-a-time `transformers.generate` server.

Both are real HTTP servers on loopback with the same model, driven by the official `openai` client: C
concurrent clients x R requests each (chat, max_tokens 64, greedy), then one client alone for the
single-stream figure. The plain server is what a new user writes first: FastAPI, `model.generate` one request
at a time on one worker thread, no streaming (its time to first token is its whole request time). (Calling
`generate` from a pool of threads instead, as `asyncio.to_thread` does, made it a third slower here: each new
thread brings its own OpenMP team. The baseline does not get that handicap.)

tunelab runs as served by default (`quantize: auto`: bf16 weights where the CPU multiplies bf16 in hardware,
else fp16 on x86, else fp32), and with each other weight format worth serving on this machine: fp32
(`--quantize none`), fp16, int8. The quality of every format that is not fp32 is measured beside its speed:
greedy continuations of the same prompts from the fp32 decoder and from that format, the share of identical
completions, and the teacher-forced top-1 agreement (fp32's tokens fed to both: how often the format's own
first choice is the same). Where the default is bf16, plain `generate` with the model in bf16 is timed alone
too (`plain_bf16`; it was slower than fp32 here, so plain fp32 stays the baseline). Reported: aggregate output
tokens/s, p50/p95 request latency and time to first token, and the ratios of each tunelab side to plain.
Every server gets one untimed request first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import Request

from tunelab.evaluate.metrics import percentile
from tunelab.fsutil import atomic_write_json

TARGETS = {"throughput_ratio_min": 8.0, "single_stream_ratio_min": 2.0}
TOPICS = ["the sea", "a lost key", "a robot chef", "winter in a city", "a football final", "an old library",
          "a mountain village", "a rainy market", "a space station", "a talking cat", "a night train",
          "a jazz club", "a desert road", "a school trip", "a lighthouse", "a garden in spring"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plain_app(model_path: str, dtype: str = "float32") -> Any:
    """The baseline: one request at a time through `model.generate`, no batching, no streaming."""
    import torch
    from fastapi import FastAPI

    from tunelab.models.loading import load_model, load_tokenizer

    tok: Any = load_tokenizer(Path(model_path))
    model: Any = load_model(Path(model_path), dtype)
    worker = ThreadPoolExecutor(1)  # one request at a time, always on the same thread
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        ids: Any = tok.apply_chat_template(
            body["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]

        def run() -> Any:
            with torch.inference_mode():
                return model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=body["max_tokens"],
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )

        import asyncio

        out = await asyncio.get_running_loop().run_in_executor(worker, run)
        new = out[0, ids.shape[1] :]
        text = tok.decode(new, skip_special_tokens=True)
        n = int(new.shape[0])
        return {
            "id": "plain",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": int(ids.shape[1]),
                "completion_tokens": n,
                "total_tokens": int(ids.shape[1]) + n,
            },
        }

    return app


def _start(cmd: list[str], env: dict[str, str], url: str, log: Path, ready: str = "/health") -> subprocess.Popen[bytes]:
    import httpx

    f = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def _load(url: str, key: str, model: str, clients: int, per_client: int, stream: bool) -> dict[str, Any]:
    import openai

    client: Any = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=3600)
    lat: list[float] = []
    ttft: list[float] = []
    tokens = 0

    def one(i: int) -> tuple[float, float, int]:
        msgs = [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}]
        t0 = time.perf_counter()
        if not stream:
            r = client.chat.completions.create(model=model, messages=msgs, max_tokens=64, temperature=0)
            dt = time.perf_counter() - t0
            return dt, dt, r.usage.completion_tokens
        first, n, chunks = None, 0, 0
        for ch in client.chat.completions.create(
            model=model,
            messages=msgs,
            max_tokens=64,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ):
            if ch.choices and ch.choices[0].delta.content:
                chunks += 1
                if first is None:
                    first = time.perf_counter() - t0
            if ch.usage is not None:
                n = ch.usage.completion_tokens
        dt = time.perf_counter() - t0
        # a server that does not report usage when streaming (llama-cpp-python's) sends a token per chunk
        return dt, first if first is not None else dt, n or chunks

    def worker(c: int) -> list[tuple[float, float, int]]:
        return [one(c * per_client + j) for j in range(per_client)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(worker, range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    client.close()
    for dt, ft, n in results:
        lat.append(dt)
        ttft.append(ft)
        tokens += n
    return {
        "requests": len(results),
        "completion_tokens": tokens,
        "wall_s": wall,
        "output_tokens_per_s": tokens / wall,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
    }


def bench_serve(
    out: Path, *, model: str | None = None, clients: int = 8, per_client: int = 16, single: int = 4, log: Any = print
) -> dict[str, Any]:
    from tunelab.models.loading import resolve_model

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model(model)
    env = {**os.environ, "TUNELAB_HOME": str(out / "home"), "TOKENIZERS_PARALLELISM": "false"}
    key = json.loads(
        subprocess.run(
            [sys.executable, "-m", "tunelab", "keys", "create", "--name", "bench", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["key"]
    result: dict[str, Any] = {
        "bench": "serve",
        "setup": {
            "model": resolved.base_model_id,
            "clients": clients,
            "requests_per_client": per_client,
            "max_tokens": 64,
            "single_stream_requests": single,
            "decoding": "greedy",
        },
    }
    import httpx

    from tunelab import kernels
    from tunelab.hardware import fbgemm
    from tunelab.serve.config import lean_weights

    default = lean_weights("auto") or "fp32"  # what `tunelab serve` picks on this machine for a lean model
    result["setup"]["default_weights"] = default
    serve = [sys.executable, "-m", "tunelab", "serve", "--model", str(resolved.path), "--port", "{port}"]
    plain = [
        sys.executable,
        "-c",
        "import sys, uvicorn; from tunelab.bench.serve import plain_app; "
        "uvicorn.run(plain_app(sys.argv[1], sys.argv[3]), host='127.0.0.1', port=int(sys.argv[2]), "
        "log_level='warning')",
        str(resolved.path),
        "{port}",
    ]
    kernel = default == "bf16" and kernels.ready()  # tunelab's bf16 kernel builds here
    with_kernel = kernels.bf16_products(kernels.bf16_rows())  # what /health says then
    result["setup"]["bf16_kernel"] = with_kernel if kernel else kernels.why_not() if default == "bf16" else None
    # side: (command, weights, timed under load too, environment)
    sides: dict[str, tuple[list[str], str, bool, dict[str, str]]] = {"tunelab": (serve, default, True, {})}
    if kernel:  # the same server with oneDNN for every bf16 product: what the kernel adds (alone: 1 row)
        sides["tunelab_onednn"] = (serve, "bf16", False, {"TUNELAB_KERNELS": "0"})
    if default != "fp32":
        sides["tunelab_fp32"] = ([*serve, "--quantize", "none"], "fp32", True, {})
    if default != "fp16" and fbgemm():
        sides["tunelab_fp16"] = ([*serve, "--quantize", "fp16"], "fp16", True, {})
    sides["tunelab_int8"] = ([*serve, "--quantize", "int8"], "int8", True, {})
    sides["plain"] = ([*plain, "float32"], "fp32", True, {})
    if default == "bf16":  # one request at a time either way: alone is enough to see its speed
        sides["plain_bf16"] = ([*plain, "bfloat16"], "bf16", False, {})
    for name, (cmd, weights, loaded_too, extra) in sides.items():
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        proc = _start([c.replace("{port}", str(port)) for c in cmd], {**env, **extra}, url, out / f"{name}.log")
        stream = not name.startswith("plain")  # tunelab streams; the plain server answers whole
        try:
            if stream:
                health = httpx.get(url + "/health", timeout=10).json()  # what the server says it runs
                if health["weights"] != weights:
                    raise RuntimeError(f"{name}: the server decodes with {health['weights']} weights, not {weights}")
                want = "onednn" if name == "tunelab_onednn" else with_kernel if kernel and weights == "bf16" else None
                if want and health.get("kernel") != want:
                    raise RuntimeError(f"{name}: the server's products run on {health.get('kernel')}, not {want}")
            # one request first, not timed: the first one of a fresh process pays for pages touched the first time
            # and lazy set-up (measured: 41.7 tokens/s alone on a cold bf16 server, 50.5 once warm)
            _load(url, key, resolved.name, 1, 1, stream=stream)
            log(f"{name}: one client alone, {single} requests")
            alone = _load(url, key, resolved.name, 1, single, stream=stream)
            loaded = None
            if loaded_too:
                log(f"{name}: {clients} clients x {per_client} requests")
                loaded = _load(url, key, resolved.name, clients, per_client, stream=stream)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        result[name] = {"weights": weights, "single": alone, "concurrent": loaded, "environment": extra}
        log(
            f"{name} ({weights}): "
            + (f"{loaded['output_tokens_per_s']:.1f} tokens/s under load, " if loaded else "")
            + f"{alone['output_tokens_per_s']:.1f} alone"
        )
    p = result["plain"]
    result["ratios"] = {}
    for name, (_, weights, loaded_too, _) in sides.items():
        if name.startswith("plain") or not loaded_too:
            continue
        t = result[name]
        result["ratios"][weights] = {
            "side": name,
            "throughput": t["concurrent"]["output_tokens_per_s"] / p["concurrent"]["output_tokens_per_s"],
            "single_stream": t["single"]["output_tokens_per_s"] / p["single"]["output_tokens_per_s"],
        }
    result["throughput_ratio"] = result["ratios"][default]["throughput"]  # the default against the baseline
    result["single_stream_ratio"] = result["ratios"][default]["single_stream"]
    if "tunelab_onednn" in result:  # the default with and without tunelab's kernel, one request at a time
        result["single_stream_ratio_kernel_vs_onednn"] = (
            result["tunelab"]["single"]["output_tokens_per_s"]
            / result["tunelab_onednn"]["single"]["output_tokens_per_s"]
        )
    if "plain_bf16" in result:
        result["single_stream_ratio_vs_plain_bf16"] = (
            result["tunelab"]["single"]["output_tokens_per_s"] / result["plain_bf16"]["single"]["output_tokens_per_s"]
        )
    n_prompts = min(len(TOPICS), clients * per_client)
    result["quality"] = {}
    for weights in result["ratios"]:
        if weights != "fp32":
            log(f"{weights} vs fp32: greedy agreement on the bench prompts")
            result["quality"][weights] = agreement(resolved.path, weights, n_prompts=n_prompts)
    result["targets"] = TARGETS
    result["met"] = {
        w: {
            "throughput": r["throughput"] >= TARGETS["throughput_ratio_min"],
            "single_stream": r["single_stream"] >= TARGETS["single_stream_ratio_min"],
        }
        for w, r in result["ratios"].items()
    }
    atomic_write_json(out / "bench-serve.json", result)
    return result


def agreement(model_path: Path, quantize: str = "int8", *, n_prompts: int = 16, max_tokens: int = 64) -> dict[str, Any]:
    """Greedy continuations of the bench prompts from the lean decoder in fp32 and with `quantize` weights:
    the share of identical completions and the teacher-forced top-1 agreement (fp32's tokens fed to both)."""
    import torch

    from tunelab.evaluate.generation import eos_ids
    from tunelab.models.loading import load_model, load_tokenizer
    from tunelab.serve.lean import LeanModel

    tok: Any = load_tokenizer(Path(model_path))
    model = load_model(Path(model_path))
    prompts = [
        list(tok.apply_chat_template(
            [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}],
            add_generation_prompt=True, tokenize=True, return_dict=True,
        )["input_ids"])
        for i in range(n_prompts)
    ]  # fmt: skip
    eos = set(eos_ids(model, tok))

    def cut(seq: list[int]) -> list[int]:  # up to and with the first end-of-turn token
        return next((seq[: i + 1] for i, t in enumerate(seq) if t in eos), seq)

    fp, q8 = LeanModel(model, max_rows=8), LeanModel(model, max_rows=8, quantize=quantize)
    same_completions, agree, total = 0, 0, 0
    with torch.inference_mode():
        for at in range(0, len(prompts), 8):
            batch = prompts[at : at + 8]
            none: list[str | None] = [None] * len(batch)
            # teacher-forced: fp32's greedy tokens go to both; int8's first choice at each position is noted
            lf, lq = fp.add(batch, none), q8.add(batch, none)
            forced: list[list[int]] = [[] for _ in batch]
            q_choice: list[list[int]] = [[] for _ in batch]
            for step in range(max_tokens):
                for f, qc, a, b in zip(forced, q_choice, lf.argmax(-1), lq.argmax(-1), strict=True):
                    f.append(int(a))
                    qc.append(int(b))
                if step < max_tokens - 1:
                    toks = [f[-1] for f in forced]
                    lf, lq = fp.step(toks, none), q8.step(toks, none)
            fp.reset()
            q8.reset()
            # free-running: int8's own greedy continuation
            lq = q8.add(batch, none)
            free: list[list[int]] = [[] for _ in batch]
            for step in range(max_tokens):
                for f, b in zip(free, lq.argmax(-1), strict=True):
                    f.append(int(b))
                if step < max_tokens - 1:
                    lq = q8.step([f[-1] for f in free], none)
            q8.reset()
            for f, qc, fr in zip(forced, q_choice, free, strict=True):
                n = len(cut(f))
                agree += sum(int(a == b) for a, b in zip(f[:n], qc[:n], strict=True))
                total += n
                same_completions += int(cut(f) == cut(fr))
    return {
        "prompts": len(prompts),
        "max_tokens": max_tokens,
        "identical_completions": same_completions / len(prompts),
        "teacher_forced_top1_agreement": agree / max(total, 1),
    }
