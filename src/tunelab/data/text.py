"""Text normalisation shared by dedup, overlap checks and label parsing."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two texts that differ only so hash the same."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def normalise_words(text: str) -> str:
    """`normalise` and punctuation removed: for matching a label inside free text."""
    return _WS.sub(" ", _PUNCT.sub(" ", normalise(text))).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:32]
