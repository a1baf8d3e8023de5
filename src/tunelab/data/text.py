"""Text normalisation shared by dedup, overlap checks and label parsing."""

from __future__ import annotations

import hashlib
import re
import unicodedata

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def collapse_ws(text: str) -> str:
    """`" ".join(text.split())`, without splitting text that is already so (most text: one C-level scan)."""
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text  # every whitespace character but " " is non-printable: nothing to collapse or strip
    return " ".join(text.split())


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two texts that differ only so hash the same."""
    if not text.isascii():  # ASCII is already NFKC
        text = unicodedata.normalize("NFKC", text)
    return collapse_ws(text.casefold())


def normalise_words(text: str) -> str:
    """`normalise` and punctuation removed: for matching a label inside free text."""
    return _WS.sub(" ", _PUNCT.sub(" ", normalise(text))).strip()


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
