"""`--backend vllm`'s translation between tunelab's engine interface and vLLM's `LLMEngine`.

vLLM needs a GPU and is not installed here (and no GPU was lent), so these tests run `VLLMEngine` against a
small stand-in written to vLLM 0.34's documented contract (`add_request` with a `TokensPrompt` and
`SamplingParams(output_kind=DELTA)`, `step()` returning `RequestOutput`s whose `outputs[0].token_ids` are the new
tokens, `abort_request`, `remove_lora`). They check tunelab's side: every token delivered once and in order, EOS
and stop ids ending a reply (and aborting it in vLLM), `length`, cancellation, a refused prompt failing only its
own request, adapters as LoRA requests. What they cannot check is vLLM itself: that is for a GPU machine.
"""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tunelab.errors import ConfigError
from tunelab.serve.engine import GenRequest


@dataclass
class _Params:  # vllm.SamplingParams's fields that tunelab sets
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    logit_bias: dict[int, float] | None
    presence_penalty: float
    frequency_penalty: float
    logprobs: int | None
    stop_token_ids: list[int] | None
    output_kind: Any
    detokenize: bool


@dataclass
class _Out:
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, Any]] | None = None  # per new token: the sampled one's and the k best, by token id


@dataclass
class _ReqOut:
    request_id: str
    outputs: list[_Out]
    finished: bool


@dataclass
class _StandIn:
    """Emits, per request, its scripted tokens two at a time (DELTA), finishing with `length` at max_tokens."""

    script: dict[int, list[int]]  # first prompt token -> the tokens to generate
    live: dict[str, tuple[list[int], int, Any]] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    loras: list[Any] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    params: list[_Params] = field(default_factory=list)

    def add_request(self, rid: str, prompt: dict[str, Any], params: _Params, lora_request: Any = None) -> str:
        ids = prompt["prompt_token_ids"]
        if not ids:
            raise ValueError("empty prompt")
        assert params.detokenize is False and params.output_kind == "DELTA"
        self.live[rid] = (list(self.script[ids[0]]), params.max_tokens, params)
        self.loras.append(lora_request)
        self.params.append(params)
        return rid

    def step(self) -> list[_ReqOut]:
        outs = []
        for rid, (toks, left, _) in list(self.live.items()):
            n = min(2, left, len(toks))
            new, rest = toks[:n], toks[n:]
            left -= n
            fin = "length" if left == 0 else ("stop" if not rest else None)
            k = self.live[rid][2].logprobs
            lps = None
            if k is not None:  # the scripted tokens rank third: two tokens (900, 901) are always likelier
                best = {900 + j: types.SimpleNamespace(logprob=-0.2 - 0.5 * j, rank=j + 1) for j in range(min(k, 2))}
                lps = [{**best, t: types.SimpleNamespace(logprob=-1.5 - t / 100, rank=3)} for t in new]
            outs.append(_ReqOut(rid, [_Out(new, fin, lps)], fin is not None))
            if fin:
                del self.live[rid]
            else:
                self.live[rid] = (rest, left, self.live[rid][2])
        return outs

    def abort_request(self, rids: list[str]) -> None:
        self.aborted += rids
        for r in rids:
            self.live.pop(r, None)

    def remove_lora(self, int_id: int) -> None:
        self.removed.append(int_id)


@pytest.fixture
def stand_in_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = _Params  # type: ignore[attr-defined]
    vllm.TokensPrompt = dict  # type: ignore[attr-defined]
    sp = types.ModuleType("vllm.sampling_params")
    sp.RequestOutputKind = types.SimpleNamespace(DELTA="DELTA")  # type: ignore[attr-defined]
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, i, path: types.SimpleNamespace(lora_name=name, lora_int_id=i, lora_path=path)  # type: ignore[attr-defined]
    for name, mod in {"vllm": vllm, "vllm.sampling_params": sp, "vllm.lora": types.ModuleType("vllm.lora"),
                      "vllm.lora.request": lora}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, mod)


def _collect(prompt: list[int], max_tokens: int = 16, **kw: Any) -> tuple[GenRequest, list[Any], threading.Event]:
    got: list[Any] = []
    end = threading.Event()

    def on_token(tok: int | None, reason: str | None) -> None:
        got.append(tok if reason is None else reason)
        if reason is not None:
            end.set()

    return GenRequest(prompt=prompt, max_tokens=max_tokens, on_token=on_token, **kw), got, end


def test_tokens_arrive_once_in_order_and_replies_end_as_they_should(stand_in_vllm: None) -> None:
    from tunelab.serve.vllm_engine import VLLMAdapters, VLLMEngine

    eos = 2
    llm = _StandIn({10: [5, 6, 7, eos, 9], 11: [5, 6, 7, 8, 9], 12: [5, 6, 7], 13: [5, 42, 7]})
    adapters = VLLMAdapters(llm, "auto")
    adapters.load_adapter(Path("/a"), "a")
    eng = VLLMEngine(llm, adapters, max_batch=8, max_queue=8, eos_ids=frozenset({eos}))
    r_eos, g_eos, _ = _collect([10, 1])
    r_len, g_len, _ = _collect([11], max_tokens=3, adapter="a")
    r_done, g_done, _ = _collect([12], logit_bias={5: 2.5}, presence_penalty=0.5, frequency_penalty=-1.0)
    r_stop, g_stop, _ = _collect([13], stop_ids=frozenset({42}))
    r_bad, g_bad, _ = _collect([])
    for r in (r_eos, r_len, r_done, r_stop, r_bad):
        eng.submit(r)
    eng._admit()
    while eng.rows:
        eng._step()
    assert g_eos == [5, 6, 7, "stop"]  # EOS ends the reply, is not sent, and vLLM stops generating it
    assert g_len == [5, 6, 7, "length"]
    assert g_done == [5, 6, 7, "stop"]
    assert g_stop == [5, "stop"]
    assert g_bad[0].startswith("error: ValueError") and len(g_bad) == 1  # only its own request fails
    assert sorted(llm.aborted) == ["tunelab-0", "tunelab-3"]  # ended by tunelab before vLLM finished them
    assert [lo.lora_name if lo else None for lo in llm.loras] == [None, "a", None, None]
    assert [p.logit_bias for p in llm.params] == [None, None, {5: 2.5}, None]  # the request's own, as given
    assert [(p.presence_penalty, p.frequency_penalty) for p in llm.params][1:3] == [(0.0, 0.0), (0.5, -1.0)]
    assert eng.tokens_out == 3 + 1 + 3 + 3 + 2  # the EOS and stop tokens count as generated
    assert all(p.logprobs is None for p in llm.params) and not r_done.token_logprobs
    adapters.delete_adapter("a")
    assert llm.removed == [1] and "a" not in adapters.requests


def test_log_probabilities_come_from_vllm_for_the_tokens_sent(stand_in_vllm: None) -> None:
    from tunelab.serve.logprobs import TokenLogprob
    from tunelab.serve.vllm_engine import VLLMAdapters, VLLMEngine

    eos = 2
    llm = _StandIn({10: [5, 6, 7, eos, 9]})
    eng = VLLMEngine(llm, VLLMAdapters(llm, "auto"), max_batch=8, max_queue=8, eos_ids=frozenset({eos}))
    r, got, _ = _collect([10], logprobs=1)
    eng.submit(r)
    eng._admit()
    while eng.rows:
        eng._step()
    assert llm.params[0].logprobs == 1 and got == [5, 6, 7, "stop"]
    # one entry per token sent (none for the EOS), the sampled token's own value and the k best
    assert r.token_logprobs == [TokenLogprob(t, -1.5 - t / 100, ((900, -0.2),)) for t in (5, 6, 7)]


def test_cancelled_requests_are_aborted_in_vllm(stand_in_vllm: None) -> None:
    from tunelab.serve.vllm_engine import VLLMAdapters, VLLMEngine

    llm = _StandIn({10: list(range(100, 120))})
    eng = VLLMEngine(llm, VLLMAdapters(llm, "auto"), max_batch=8, max_queue=8, eos_ids=frozenset())
    r, got, _ = _collect([10], max_tokens=20)
    eng.submit(r)
    eng._admit()
    eng._step()
    r.cancelled.set()
    eng._step()
    assert got == [100, 101, "cancelled"] and llm.aborted == ["tunelab-0"] and not eng.rows


def test_the_engine_loop_drives_vllm_until_stopped(stand_in_vllm: None) -> None:
    from tunelab.serve.vllm_engine import VLLMAdapters, VLLMEngine

    llm = _StandIn({10: [1, 3, 5, 7]})
    eng = VLLMEngine(llm, VLLMAdapters(llm, "auto"), max_batch=2, max_queue=8, eos_ids=frozenset())
    eng.start()
    try:
        reqs = [_collect([10]) for _ in range(5)]  # more than max_batch: the rest wait for a slot
        for r, _, _ in reqs:
            eng.submit(r)
        for _, got, end in reqs:
            assert end.wait(10)
            assert got == [1, 3, 5, 7, "stop"]
    finally:
        eng.stop()


def test_without_vllm_or_a_gpu_the_backend_is_a_config_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if "vllm" in sys.modules or __import__("importlib").util.find_spec("vllm"):
        pytest.skip("vLLM is installed here")
    from tunelab.serve.vllm_engine import build_llm

    with pytest.raises(ConfigError, match="vLLM"):
        build_llm(tmp_path, context=512, max_batch=8, adapters={}, max_loras=4, extra={})


def test_the_watermark_is_refused_on_vllm_whose_sampler_would_not_add_it() -> None:
    from pydantic import ValidationError

    from tunelab.serve.config import ServeConfig

    ServeConfig(backend="vllm")
    ServeConfig(watermark={"enabled": True})
    with pytest.raises(ValidationError, match="backend: tunelab"):
        ServeConfig(backend="vllm", watermark={"enabled": True})


def test_lora_rank_rounds_up_to_what_vllm_accepts(tmp_path: Path) -> None:
    from tunelab.errors import ModelError
    from tunelab.serve.vllm_engine import lora_rank

    for r, want in ((4, 8), (8, 8), (12, 16), (64, 64)):
        (tmp_path / f"a{r}").mkdir()
        (tmp_path / f"a{r}" / "adapter_config.json").write_text(f'{{"r": {r}}}')
        assert lora_rank({"x": tmp_path / f"a{r}"}) == want
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "adapter_config.json").write_text('{"r": 1024}')
    with pytest.raises(ModelError):
        lora_rank({"x": tmp_path / "big"})
