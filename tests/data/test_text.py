from __future__ import annotations

import random

from tunelab.data.text import collapse_ws, normalise


def test_collapse_ws_equals_split_join_on_every_kind_of_whitespace() -> None:
    rng = random.Random(0)
    chars = [" ", "\t", "\n", "\r", "a", "B", "\u00a0", "\u2003", "\u2028", "\x1c", "\x85", ".", "\u200b", "é"]
    for _ in range(20_000):
        text = "".join(rng.choice(chars) for _ in range(rng.randrange(0, 9)))
        assert collapse_ws(text) == " ".join(text.split()), repr(text)


def test_normalise_folds_case_width_and_whitespace() -> None:
    assert normalise("  Hello\tWORLD ") == "hello world"
    fullwidth = "".join(chr(0xFF00 + ord(c) - 0x20) for c in "full") + "\u3000" + "WIDTH"  # NFKC on non-ASCII
    assert normalise(fullwidth) == "full width"
