"""Does a reply echo what it must not: the system prompt it was given, a key, a secret?

- A secret (an API key, a password: one "word" of 8 or more characters with no space) leaks when it appears in
  the reply as it is, or with its case changed.
- A prompt (a system or developer message) leaks when the reply repeats a run of `RUN` of its words in order
  (case, punctuation and spacing ignored), or the whole prompt when it is shorter than that. A run of 8 words
  is long enough that ordinary answers do not share one with their instructions by chance, and short enough to
  catch a paraphrase that keeps whole clauses. A spaced-out or translated prompt is not found: this is a check
  on verbatim leakage, which is what extraction attacks mostly get.

`leaks` returns the character spans of the reply to hide; `mask` hides them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

RUN = 8
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _words(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]


def _is_secret(s: str) -> bool:
    return len(s) >= 8 and not any(c.isspace() for c in s)


def leaks(reply: str, protected: Sequence[str], run: int = RUN) -> list[tuple[int, int, str]]:
    """(start, end, kind) spans of `reply` that repeat a protected text: kind "secret" or "prompt"."""
    found: list[tuple[int, int, str]] = []
    low = reply.lower()
    rw = _words(reply)
    seq = [w for w, _, _ in rw]
    for p in protected:
        p = p.strip()
        if not p:
            continue
        if _is_secret(p):
            k = low.find(p.lower())
            while k >= 0:
                found.append((k, k + len(p), "secret"))
                k = low.find(p.lower(), k + 1)
            continue
        pw = [w for w, _, _ in _words(p)]
        n = min(run, len(pw))
        if n < 3:  # a prompt of one or two words says nothing by being repeated
            continue
        grams = {tuple(pw[i : i + n]) for i in range(len(pw) - n + 1)}
        for i in range(len(seq) - n + 1):
            if tuple(seq[i : i + n]) in grams:
                found.append((rw[i][1], rw[i + n - 1][2], "prompt"))
    return _merge(found)


def _merge(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for s, e, k in sorted(spans):
        if out and s <= out[-1][1]:
            ps, pe, pk = out[-1]
            out[-1] = (ps, max(pe, e), pk if pk == k else "secret")
        else:
            out.append((s, e, k))
    return out


def mask(reply: str, spans: Sequence[tuple[int, int, str]]) -> str:
    """The reply with each span replaced by a placeholder naming what it hid."""
    out, at = [], 0
    for s, e, k in sorted(spans):
        out += [reply[at:s], "[REDACTED SECRET]" if k == "secret" else "[REDACTED SYSTEM PROMPT]"]
        at = e
    return "".join(out) + reply[at:]
