"""Labelled AI replies for the guard's output-moderation question.

Source: PyRIT's scorer-evaluation sets (`pyrit/datasets/scorer_evals`, MIT): replies of real assistants to
red-team objectives, each scored by people, either for harm on a 0-1 scale (`harm/*.csv`; several scorers in the
`*_multi_score` files, averaged) or for whether the reply achieved a harmful objective (`objective/*.csv`, 0/1).
A reply is harmful when its score is at least 0.5; its category is its file's (mapped onto `CATEGORIES`). The
replies to one objective all go to the same side (`train` for 70% of objectives by a hash, else held out), so the
held-out figures are on requests the guard never saw answered. Chatterbot's bot turns add everyday replies.

Categories with fewer than a few dozen labelled replies on disk (chemical/biological weapons, illegal activity)
are left to the phrase lexicons of `serve.guards`, which keep their own categories (weapons, drugs, sexual
content involving minors) beside the learned ones.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tunelab.serve import injection_corpus as ic

# the learned categories, each with the word the guard answers with (its first token is the label)
CATEGORIES = {
    "violence": "violence",
    "self_harm": "self",
    "sexual": "sexual",
    "hate": "hate",
    "cyber": "cyber",
    "privacy": "privacy",
    "misinformation": "misinformation",
    "bias": "bias",
}
NONE = "none"
_FROM_FILE = {
    "violence": "violence", "violence_multi_score": "violence", "self_harm": "self_harm", "sexual": "sexual",
    "hate_speech": "hate", "hate_speech_multi_score": "hate", "mini_hate_speech": "hate",
    "harassment_bullying": "hate", "exploits": "cyber", "cyber": "cyber", "phishing": "cyber",
    "privacy": "privacy", "info_integrity": "misinformation", "misinformation": "misinformation",
    "representational": "bias", "bias": "bias",
}  # fmt: skip


@dataclass(frozen=True)
class Reply:
    text: str
    category: str  # a key of CATEGORIES, or "" for a harmless reply
    source: str
    split: str  # train | test (held out)


def _score(row: dict[str, str]) -> float | None:
    vals = []
    for k, v in row.items():
        if k and k.startswith("human_score") and v not in (None, ""):
            try:
                vals.append(float(v))
            except ValueError:
                return None
    return sum(vals) / len(vals) if vals else None


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    return list(csv.DictReader(lines))


def pyrit_replies() -> list[Reply]:
    base = ic.package_dir("pyrit")
    root = base / "datasets" / "scorer_evals" if base else None
    out: list[Reply] = []
    for kind in ("harm", "objective"):
        for f in sorted((root / kind).glob("*.csv")) if root and (root / kind).is_dir() else []:
            cat = _FROM_FILE.get(f.stem)
            if cat is None:
                continue
            for row in _rows(f):
                text, score, objective = row.get("assistant_response") or "", _score(row), row.get("objective") or ""
                if not text.strip() or score is None or (row.get("data_type") or "text") != "text":
                    continue
                split = ic._split("reply:" + objective)
                out.append(Reply(text.strip(), cat if score >= 0.5 else "", f"pyrit:{kind}/{f.stem}", split))
    return out


def chatterbot_replies(limit: int = 400) -> list[Reply]:
    """The bot's side of chatterbot's conversations (split by category, as `injection_corpus` splits them)."""
    out: list[Reply] = []
    for category, convs in ic.chatterbot_conversations():
        for conv in convs:
            for t in conv[1::2]:
                if isinstance(t, str) and len(t) > 20:
                    out.append(Reply(t, "", "chatterbot_replies", ic._split("chatterbot:" + category)))
    step = max(1, len(out) // limit)
    return out[::step][:limit]


def replies() -> list[Reply]:
    """Every labelled reply, harmful ones with their category; exact duplicates once (the train copy)."""
    seen: set[str] = set()
    out = []
    for r in sorted([*pyrit_replies(), *chatterbot_replies()], key=lambda r: r.split != "train"):
        key = " ".join(r.text.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out

