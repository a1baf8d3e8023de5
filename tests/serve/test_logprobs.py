"""Token log-probabilities: the values against the model run by hand, the tokens against the reply the client
got (whole, streamed, cut by a stop string, legacy completions), and none for text an output guard changed."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.test_server import TUNELAB, Server, start_server, stop_server
from tunelab.serve.logprobs import TokenLogprob, TokenText

openai = pytest.importorskip("openai")

PROMPT = "The market rallied"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("serve-lp")
    env = {**os.environ, "TUNELAB_HOME": str(tmp / "home")}
    made = subprocess.run([*TUNELAB, "keys", "create", "--name", "main", "--json"], capture_output=True, text=True,
                          env=env, check=True)  # fmt: skip
    # fp32 weights (the default on a CPU is fp16 or bf16 weights), so the values can be compared with a plain
    # fp32 forward closely
    (tmp / "serve.yaml").write_text("quantize: none\n")
    proc, url = start_server(["--model", str(tiny_model_dir), "--config", str(tmp / "serve.yaml")], env)
    srv = Server(url, env, {"main": json.loads(made.stdout)["key"]}, proc)
    yield srv
    stop_server(srv)


def _by_hand(
    model_dir: Path, prompt: list[int], steps: int, k: int, presence: float = 0.0
) -> list[tuple[int, float, list[float]]]:
    """Greedy decoding with a plain loop over the whole sequence, with OpenAI's presence penalty on the tokens
    so far: (token, its log-probability under the model, the top k's)."""
    import torch

    from tunelab.models.loading import load_model

    model = load_model(model_dir).eval()
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            seen = sorted(set(ids[len(prompt) :]))
            pen = torch.full((len(seen),), -presence)
            tok = int(logits.index_add(0, torch.tensor(seen, dtype=torch.long), pen).argmax())
            out.append((tok, float(lp[tok]), [float(v) for v in torch.topk(lp, k).values]))
            ids.append(tok)
    return out


def test_chat_logprobs_are_the_models_and_spell_the_reply(server: Server, tiny_model_dir: Path, tiny_tok: Any) -> None:
    from tunelab.models.chat import encode_prompt

    msgs = [{"role": "user", "content": PROMPT}]
    r = server.client().chat.completions.create(
        model="tiny-llama", messages=msgs, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3,  # type: ignore[arg-type]
        presence_penalty=1.5,
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 12
    # (the untrained model samples lone bytes of characters: both sides show them as U+FFFD)
    assert b"".join(bytes(e.bytes) for e in content).decode(errors="replace") == r.choices[0].message.content
    # the penalty changes what is sampled (the model's own greedy reply differs), not the log-probabilities:
    # they are the model's distribution at each position
    want = _by_hand(tiny_model_dir, encode_prompt(tiny_tok, msgs), 12, 3, presence=1.5)
    assert [t for t, _, _ in want] != [t for t, _, _ in _by_hand(tiny_model_dir, encode_prompt(tiny_tok, msgs), 12, 1)]
    text_of = TokenText(tiny_tok)
    for e, (tok, lp, top) in zip(content, want, strict=True):
        assert e.token == text_of(tok)[0]
        assert math.isclose(e.logprob, lp, abs_tol=1e-3)
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(top, abs=1e-3)
    assert any(e.top_logprobs[0].token != e.token for e in content)  # some sampled token was not the best


def test_streamed_logprobs_equal_the_whole_replys(server: Server) -> None:
    c = server.client()
    kw: dict[str, Any] = {"model": "tiny-llama", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 10,
                          "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    whole = c.chat.completions.create(**kw).choices[0].logprobs.content
    chunks = [ch for ch in c.chat.completions.create(**kw, stream=True) if ch.choices]
    streamed = [e for ch in chunks if ch.choices[0].logprobs for e in ch.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in whole]


def test_no_logprobs_unless_asked(server: Server) -> None:
    r = server.client().chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": PROMPT}], max_tokens=3, temperature=0
    )
    assert r.choices[0].logprobs is None


def test_a_stop_strings_tokens_get_none(server: Server) -> None:
    """Cut the reply at a piece of its own text: the entries cover the reply sent and stop there."""
    c = server.client()
    base = {"model": "tiny-llama", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            "logprobs": True, "max_tokens": 16}  # fmt: skip
    full = c.chat.completions.create(**base)
    entries = full.choices[0].logprobs.content
    spelled = [bytes(e.bytes) for e in entries]
    # a stop string that starts inside the reply, at the 6th token's text
    def text(i: int) -> str:
        return spelled[i].decode(errors="ignore").strip()

    before = b"".join(spelled[:5]).decode(errors="replace")
    stop = next(text(i) for i in range(5, len(spelled)) if text(i) and text(i) not in before)
    got = c.chat.completions.create(**base, stop=[stop])
    text = got.choices[0].message.content
    assert got.choices[0].finish_reason == "stop" and stop not in text
    sent = got.choices[0].logprobs.content
    assert 0 < len(sent) < got.usage.completion_tokens  # the stop string's tokens were generated, not sent
    joined = b"".join(bytes(e.bytes) for e in sent).decode(errors="replace")
    assert joined.startswith(text) and len(joined) < len(text) + len(stop)  # at most the token the cut fell in


def test_legacy_completions_logprobs(server: Server) -> None:
    r = server.client().completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert all(v <= 0 for v in lp.token_logprobs)
    for tok, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 2 <= len(top) <= 3 and top[tok] == v and max(top.values()) == v  # greedy: it is the best
    text = r.choices[0].text
    ends = [*lp.text_offset[1:], len(text)]
    assert lp.text_offset[0] == 0 and all(a <= b for a, b in zip(lp.text_offset, ends, strict=True))


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
         "top_logprobs"),
        ("completions", {"prompt": "x", "logprobs": 6}, "logprobs"),
    ],
)  # fmt: skip
def test_out_of_range_requests_are_400_naming_the_field(server: Server, route: str, body: dict[str, Any],
                                                        param: str) -> None:  # fmt: skip
    import httpx

    r = httpx.post(f"{server.url}/v1/{route}", json={"model": "tiny-llama", **body}, timeout=30,
                   headers={"Authorization": f"Bearer {server.keys['main']}"})  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


class _Tok:
    """A tokenizer of one character per token id (ord), enough for `Stream`."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)

    def convert_ids_to_tokens(self, i: int) -> str:
        return chr(i)


class _Host:
    def __init__(self) -> None:
        self.tok = _Tok()
        self.token_text = TokenText(self.tok)
        self.vocab = 0x110000


def _run_stream(reply: str, out_filter: Any, stops: list[str] | None = None) -> tuple[str, list[str]]:
    """Feed `reply` through a chat `Stream` one character-token at a time; (text sent, tokens with entries)."""
    from tunelab.serve.protocol import ChatRequest
    from tunelab.serve.streaming import Stream

    body = ChatRequest(model="m", messages=[{"role": "user", "content": "x"}], logprobs=True, stop=stops)  # type: ignore[list-item]

    async def go() -> tuple[str, list[str]]:
        s = Stream(_Host(), body, [1], 100, None, 0, out_filter)  # type: ignore[arg-type]
        for ch in reply:
            s.req.token_logprobs.append(TokenLogprob(ord(ch), -0.5))
            s._on_token(ord(ch), None)
        s._on_token(None, "stop")
        text, _, lp = await s.collect()
        return text, [e["token"] for e in (lp or {}).get("content", [])]

    return asyncio.run(go())


def test_no_entry_shows_what_an_output_guard_redacted() -> None:
    reply = "Call me on 555 0100 tomorrow, " + "please " * 10

    def redact(text: str, final: bool) -> tuple[str, bool]:
        return text.replace("555 0100", "[PHONE]"), False

    text, tokens = _run_stream(reply, redact)
    assert text.startswith("Call me on [PHONE] tomorrow")
    assert "".join(tokens) == "Call me on "  # the entries stop where the guard changed the reply
    unguarded, all_tokens = _run_stream(reply, None)
    assert unguarded == reply and "".join(all_tokens) == reply


def test_entries_stop_with_the_stop_string() -> None:
    text, tokens = _run_stream("one two three four", None, stops=["thr"])
    assert text == "one two " and "".join(tokens) == "one two "


def test_a_token_with_no_chance_gets_openais_floor_not_minus_infinity() -> None:
    import torch

    from tunelab.serve.logprobs import FLOOR, from_logits

    e = from_logits(torch.tensor([0.0, float("-inf"), 1.0]), 1, 3)
    assert e.logprob == FLOOR and e.top[-1] == (1, FLOOR)
    assert e.top[0][0] == 2 and math.isclose(e.top[0][1], -math.log1p(math.exp(-1.0)), abs_tol=1e-6)
    json.dumps([e.logprob, e.top], allow_nan=False)  # what the server's JSON responses require
