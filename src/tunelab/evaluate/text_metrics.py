"""Per-example scores of a generated answer against its reference (and, for faithfulness, its context).

- exact_match and token_f1: SQuAD normalisation (case, punctuation, articles, whitespace).
- rouge_l: F-measure of the longest common subsequence of normalised words.
- chrf: character n-gram F-score (n = 1..6, beta = 2, whitespace removed), as sacrebleu's sentence chrF.
- support: share of the answer's content words (and numbers/names) found in the context — a cheap
  faithfulness baseline: a claim whose words are not in the passage is unsupported.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "their",
        "they",
        "them",
        "he",
        "she",
        "his",
        "her",
        "i",
        "you",
        "we",
        "our",
        "your",
        "my",
        "me",
        "not",
        "no",
        "yes",
        "do",
        "does",
        "did",
        "has",
        "have",
        "had",
        "will",
        "would",
        "can",
        "could",
        "should",
        "may",
        "might",
        "must",
        "shall",
        "so",
        "than",
        "then",
        "too",
        "very",
        "just",
        "also",
        "into",
        "over",
        "under",
        "about",
        "after",
        "before",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "some",
        "each",
        "such",
        "only",
        "own",
        "same",
        "other",
        "more",
        "most",
    ]
)


def squad_normalise(text: str) -> str:
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, ref: str) -> float:
    return float(squad_normalise(pred) == squad_normalise(ref))


def token_f1(pred: str, ref: str) -> float:
    p, r = squad_normalise(pred).split(), squad_normalise(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    p, r = squad_normalise(pred).split(), squad_normalise(ref).split()
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def _char_ngrams(text: str, n: int) -> Counter[str]:
    return Counter(text[i : i + n] for i in range(len(text) - n + 1))


def chrf(pred: str, ref: str, *, order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 1]: n-gram precision and recall averaged over n, then F-beta (sacrebleu's
    definition, with its smoothing of orders that have no n-grams left out)."""
    hyp, gold = "".join(pred.split()), "".join(ref.split())
    if not hyp or not gold:
        return float(hyp == gold)
    precs, recs = [], []
    for n in range(1, order + 1):
        h, g = _char_ngrams(hyp, n), _char_ngrams(gold, n)
        if not h or not g:
            continue
        m = sum((h & g).values())
        precs.append(m / sum(h.values()))
        recs.append(m / sum(g.values()))
    if not precs:
        return 0.0
    p, r = sum(precs) / len(precs), sum(recs) / len(recs)
    if p + r == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r)


def content_words(text: str) -> list[str]:
    return [w for w in squad_normalise(text).split() if w not in STOPWORDS]


def support(answer: str, context: str) -> float:
    """Share of the answer's content words that occur in the context (1.0 for an answer with none)."""
    words = content_words(answer)
    if not words:
        return 1.0
    ctx = set(squad_normalise(context).split())
    return sum(1 for w in words if w in ctx) / len(words)


def reference_scores(pred: str, ref: str) -> dict[str, float]:
    return {
        "exact_match": exact_match(pred, ref),
        "token_f1": token_f1(pred, ref),
        "rouge_l": rouge_l(pred, ref),
        "chrf": chrf(pred, ref),
    }
