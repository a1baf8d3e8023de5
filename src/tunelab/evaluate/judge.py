"""An optional local judge for faithfulness: is each claim of an answer supported by its context?

The judge is any local causal LM (`--judge default` is the bundled model; a larger local model judges
better). Its verdict is constrained to a JSON schema with an enum, `{"verdict": "supported" | "unsupported"}`:
the judge does not generate free text that might not parse; each allowed JSON document is scored as the
whole assistant reply and the most likely one is the verdict. So every verdict is valid JSON by
construction, and the same judge on the same input always gives the same verdict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunelab.evaluate.scoring import score_continuations

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"enum": ["supported", "unsupported"]}},
    "required": ["verdict"],
    "additionalProperties": False,
}
VERDICTS = [json.dumps({"verdict": v}) for v in VERDICT_SCHEMA["properties"]["verdict"]["enum"]]  # type: ignore[index]
SYSTEM = (
    "You check facts. Given a context and a claim, decide whether the context supports the claim. "
    'Reply with JSON only: {"verdict": "supported"} or {"verdict": "unsupported"}.'
)
_SENT = re.compile(r"(?<=[.!?])\s+")


def claims(answer: str, max_claims: int = 8) -> list[str]:
    """The answer's sentences (its claims), at most `max_claims`; fragments of 1-2 characters dropped."""
    return [s.strip() for s in _SENT.split(answer.strip()) if len(s.strip()) > 2][:max_claims]


def judge_support(
    judge: Any, tok: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8
) -> list[dict[str, Any]]:
    """For each (answer, context): the share of the answer's claims the judge finds supported, and each
    claim's verdict as the schema's JSON."""
    from tunelab.evaluate.run import chat_choices

    jobs: list[tuple[int, str]] = []
    contexts, conts = [], []
    for k, (answer, context) in enumerate(pairs):
        for c in claims(answer):
            msgs = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Context: {context}\n\nClaim: {c}\n\nIs the claim supported?"},
            ]
            ctx, options = chat_choices(tok, msgs, VERDICTS)
            contexts.append(ctx)
            conts.append(options)
            jobs.append((k, c))
    scored = score_continuations(judge, contexts, conts, batch_size=batch_size) if jobs else []
    out: list[dict[str, Any]] = [{"support": 1.0, "claims": []} for _ in pairs]  # no claim: nothing unsupported
    for (k, c), s in zip(jobs, scored, strict=True):
        best = max(range(len(VERDICTS)), key=lambda j: s[j].logprob)
        out[k]["claims"].append({"claim": c, "verdict": json.loads(VERDICTS[best])})
    for o in out:
        if o["claims"]:
            o["support"] = sum(1 for c in o["claims"] if c["verdict"]["verdict"] == "supported") / len(o["claims"])
    return out
