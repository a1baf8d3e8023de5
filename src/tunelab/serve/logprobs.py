"""Token log-probabilities as OpenAI's APIs return them, for the tokens a reply actually showed.

The engine records, for each generated token of a request that asks for them, the token's log-probability
under the model and the `k` most likely tokens' (`TokenLogprob`): the model's own distribution at that
position (log-softmax of its logits), before the watermark, `logit_bias`, the penalties and the temperature
change what is sampled, as vLLM's default `raw_logprobs` mode does. (So they do not reveal the watermark's
green lists either.)

Which tokens get an entry is the reply's business (`Stream`): a token's entry is sent once its text has been
sent; the tokens of a stop string that was cut off get none; and where an output guard changed the reply
(redacted a finding), no token from the first changed character on gets one, since its `token` and `bytes`
would show what the guard removed.

`TokenText` gives a token's text and exact bytes (byte-level BPE and `<0xNN>` byte-fallback tokens included): a
token that is part of a multi-byte character is named by its bytes in `token` (`bytes:\\xe2\\x80`, as OpenAI
names them), and `bytes` is how a client puts the character back together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MAX_TOP = 20  # OpenAI's limit on top_logprobs (chat); the legacy completions' `logprobs` goes to 5
MAX_TOP_LEGACY = 5
FLOOR = -9999.0  # OpenAI's value for a token too unlikely to have a finite log-probability (JSON has no -inf)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the `k` most likely (token, log-probability), best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def from_logits(logits: Any, token: int, k: int) -> TokenLogprob:
    """The entry of `token` sampled from `logits` (one position's, any float dtype), with the top `k`."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1).clamp(min=FLOOR)
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        vals, ids = torch.topk(lp, k)
        top = tuple((int(i), float(v)) for i, v in zip(ids.tolist(), vals.tolist(), strict=True))
    return TokenLogprob(token, float(lp[token]), top)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


class TokenText:
    """A tokenizer's tokens as (text, bytes), each token worked out once."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token: int) -> tuple[str, bytes]:
        got = self._cache.get(token)
        if got is None:
            got = self._cache[token] = self._work_out(token)
        return got

    def _work_out(self, token: int) -> tuple[str, bytes]:
        text = str(self.tok.decode([token], skip_special_tokens=False))
        piece = self.tok.convert_ids_to_tokens(token)
        raw: bytes | None = None
        if isinstance(piece, str) and piece:
            m = _BYTE_TOKEN.fullmatch(piece)
            dec = _byte_decoder()
            if m:  # sentencepiece byte fallback
                raw = bytes([int(m.group(1), 16)])
            elif all(c in dec for c in piece):  # byte-level BPE: each character stands for one byte
                b = bytes(dec[c] for c in piece)
                try:
                    raw = b if b.decode("utf-8") == text else None
                except UnicodeDecodeError:  # part of a character: the decoded text is U+FFFD
                    raw = b if "\ufffd" in text else None
        if raw is None:
            raw = text.encode("utf-8")
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:  # part of a character: named by its bytes, as OpenAI does
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw


def chat_entries(entries: list[TokenLogprob], text_of: TokenText, k: int) -> list[dict[str, Any]]:
    """Chat completions' `logprobs.content` items."""

    def one(token: int, lp: float) -> dict[str, Any]:
        s, b = text_of(token)
        return {"token": s, "logprob": lp, "bytes": list(b)}

    return [{**one(e.token, e.logprob), "top_logprobs": [one(t, v) for t, v in e.top[:k]]} for e in entries]


def legacy(entries: list[TokenLogprob], starts: list[int], text_of: TokenText, k: int) -> dict[str, Any]:
    """Completions' `logprobs` object: tokens, their log-probabilities, per token the top `k` as {token: logprob}
    (and the sampled one, as OpenAI adds it when it is not among them), and each token's character offset in
    the reply (`starts`)."""
    tokens, tops = [], []
    for e in entries:
        s, _ = text_of(e.token)
        tokens.append(s)
        top = {text_of(t)[0]: v for t, v in e.top[:k]}
        top.setdefault(s, e.logprob)
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries], "top_logprobs": tops,
            "text_offset": list(starts)}  # fmt: skip
