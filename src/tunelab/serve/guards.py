"""Guards on what goes into and comes out of a served model; `tunelab guard scan` runs the same offline.

- injection (input): weighted phrase rules for prompt injection and jailbreak attempts ("ignore the previous
  instructions", "you are now DAN", role markers smuggled into content, "reveal your system prompt"...),
  whose score is 1 - prod(1 - w) over the rules that fire; and, unless `classifier: false`, a small local
  classifier (`injection_model`: hashed n-grams, well under a millisecond) whose probability is shifted so that
  the threshold it was trained for maps to 0.5. The injection score is the higher of the two, flagged at
  `threshold`.
- pii (input and output): the data audit's detectors (e-mail, phone, cards with Luhn, IBAN checksum, IPs,
  national ids, keys and tokens); `redact` replaces findings with typed placeholders.
- moderation (output, and input if asked): categories from phrase lexicons (violence, self-harm, weapons,
  drugs, hate, sexual content involving minors); the categories a deployment cares about are configurable.
Each guard has an action: block (the request is refused with a 400 `content_filter` error), redact, or
flag (served, and the decision logged). Every decision goes to the ledger.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunelab.data.pii import find_pii, redact
from tunelab.errors import ConfigError
from tunelab.serve import injection_model
from tunelab.serve.injection_model import InjectionModel

Action = Literal["block", "redact", "flag", "off"]

# (name, weight, pattern): a weight is how sure one match alone makes us; written against the DEV half of
# tunelab/bench/guard_set.py so that benign look-alikes ("ignore the noise in the data") stay below threshold.
# Patterns are lowercase and run on the lowercased text: about twice as fast as re.IGNORECASE here (p99 on
# 6,000-character jailbreak prompts 7.0 -> 4.8 ms for all rules).
_INJECTION_RULES: list[tuple[str, float, re.Pattern[str]]] = [
    (name, w, re.compile(p, re.S))
    for name, w, p in [
        ("ignore_instructions", 0.85,
         r"\b(?:ignore|disregard|forget|skip|override|bypass|drop|discard|abandon|stop following)\b[^.\n]{0,40}"
         r"\b(?:previous|prior|above|earlier|preceding|all|any|your|the system|original)\b[^.\n]{0,30}"
         r"\b(?:instructions?|prompts?|rules?|directions|guidelines|directives|context|messages?)\b"),
        ("ignore_source", 0.7,
         r"\b(?:ignore|disregard)\s+(?:the|what|your|all|any|everything)\b[^.\n]{0,30}\b(?:above|before|earlier|"
         r"previous|the user|the developer|told you|said)\b"),
        ("drop_given_rules", 0.8,
         r"\b(?:drop|discard|abandon|forget|ignore)\b[^.\n]{0,20}\b(?:rules?|instructions?|guidelines)\b[^.\n]{0,30}"
         r"\b(?:given|told|received)\b"),
        ("new_instructions", 0.6,
         r"\b(?:new|updated|real|actual|true)\s+(?:instructions?|task|orders|directive)s?\s*:"),
        ("new_operator", 0.6, r"\b(?:i am|i'm)\s+your\s+(?:new\s+)?(?:operator|master|owner|developer|creator|admin)"),
        ("role_marker", 0.7,
         r"(?:<\|im_start\|>\s*system|\[inst\][^\[]{0,400}\[/inst\]|<<sys>>[\s\S]{0,400}<</sys>>|^\s*#{2,}\s*"
         r"(?:system|assistant)\s*:|\bsystem\s*(?:note|message|prompt|override)\s*(?:to|for)\s+(?:the\s+)?"
         r"(?:assistant|ai|model)|\badmin(?:istrator)? override\b|\bsystem message for the (?:ai|assistant|model)\b)"),
        ("persona_jailbreak", 0.8,
         r"\b(?:you are now|from now on,? you are|pretend (?:to be|you are)|act as|roleplay as)\b[^.\n]{0,120}"
         r"\b(?:dan|do anything now|unfiltered|uncensored|jailbroken|without (?:any )?(?:restrictions|rules|limits|"
         r"filters)|evil|no (?:rules|restrictions|limits)|never refuses?)\b"),
        ("dev_mode", 0.75,
         r"\b(?:enable|enter|activate|switch to|turn on|you are (?:now )?in)\s+"
         r"(?:developer|debug|god|sudo|jailbreak|dan)\s+mode\b|\b(?:developer|god|sudo|jailbreak)\s+mode\s*(?::|on\b|enabled|activated)"),
        ("reveal_prompt", 0.7,
         r"\b(?:reveal|show|print|repeat|output|tell me|leak|display)\b[^.\n]{0,30}\b(?:your|the)\s+(?:\w+\s+){0,2}"
         r"(?:system prompt|prompt|instructions|system message|configuration)\b[^.\n]{0,40}"
         r"\b(?:verbatim|word for word|confidential|hidden|given|you were given|secret)\b"
         r"|\b(?:reveal|leak|print|show)\b[^.\n]{0,20}\b(?:your|the)\s+(?:hidden|secret|system|initial|original|"
         r"confidential)\s+(?:\w+\s+)?(?:prompt|instructions|configuration)"),
        ("no_rules", 0.55,
         r"\b(?:no longer|not) (?:bound|restricted|limited) by\b|\b(?:without|ignore) (?:your |any )?(?:safety|"
         r"content|ethical) (?:guidelines|filters|policies|rules)\b|\b(?:no|without) content polic(?:y|ies)\b"
         r"|\bnothing (?:is|was) off[- ]limits\b|\bget around the (?:content )?filter"),
        ("address_the_ai", 0.45,
         r"\b(?:attention|note|instruction|message)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|language model|llm|"
         r"model|chatbot)\b"),
        ("addressed_command", 0.7,
         r"\b(?:assistant|ai|model|chatbot|llm)\s*[,:]\s*(?:please\s+)?(?:ignore|disregard|forget|stop|do not|"
         r"don't)\b|\b(?:ai|assistant|model)\b[^.\n]{0,15}:\s*(?:ignore|disregard)"),
        ("output_only", 0.35,
         r"\b(?:reply|respond|answer|output|say|print|write)\b[^.\n]{0,25}\b(?:only|just|nothing (?:but|else))\b"
         r"[^.\n]{0,25}\b(?:the word|the code|the phrase|the string)\b"),
        ("regardless", 0.4, r"\bregardless of (?:the|what|any|your) (?:question|user|instructions?|rules)"),
        ("hidden_comment", 0.5, r"<!--[^>]{0,200}\b(?:ai|assistant|model|ignore|instruction)\b[^>]{0,200}-->"),
    ]
]  # fmt: skip

_MODERATION: dict[str, re.Pattern[str]] = {  # lowercase, run on the lowercased text (as the injection rules)
    name: re.compile(p)
    for name, p in {
        "violence": r"\b(?:kill|murder|stab|shoot|behead|torture|massacre)\w*\b[^.\n]{0,40}\b(?:him|her|them|you|"
        r"people|someone|my|the (?:man|woman|child|kids?|neighbou?r))\b",
        "self_harm": r"\b(?:kill myself|suicide|self[- ]harm|cut myself|end my life|hurt myself)\b",
        "weapons": r"\b(?:pipe bomb|build a bomb|make a bomb|explosive device|nerve agent|chlorine gas|"
        r"untraceable gun|ghost gun)\b",
        "drugs": r"\b(?:make|cook|synthesi[sz]e|produce)\b[^.\n]{0,30}\b(?:meth(?:amphetamine)?|heroin|fentanyl|"
        r"cocaine|lsd)\b",
        "hate": r"\b(?:inferior race|subhuman|ethnic cleansing|should be exterminated|gas the)\b",
        "sexual_minors": r"\b(?:child|minor|underage|kid)s?\b[^.\n]{0,30}\b(?:sexual|nude|naked|porn)\w*\b",
    }.items()
}


class GuardRule(BaseModel):
    model_config = {"extra": "forbid"}
    action: Action = "flag"
    threshold: float = Field(0.5, ge=0.0, le=1.0)  # injection only
    classifier: bool = True  # injection only: the local classifier as well as the rules
    classifier_model: str | None = None  # injection only: a file from `tunelab guard train` (default: shipped)
    categories: list[str] | None = None  # moderation only: None = all


class GuardConfig(BaseModel):
    model_config = {"extra": "forbid"}
    injection: GuardRule = Field(default_factory=lambda: GuardRule(action="block"))
    pii_input: GuardRule = Field(default_factory=lambda: GuardRule(action="redact"))
    pii_output: GuardRule = Field(default_factory=lambda: GuardRule(action="redact"))
    moderation_input: GuardRule = Field(default_factory=lambda: GuardRule(action="flag"))
    moderation_output: GuardRule = Field(default_factory=lambda: GuardRule(action="flag"))


@dataclass
class Decision:
    guard: str
    action: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"guard": self.guard, "action": self.action, **self.detail}


def rule_score(text: str) -> tuple[float, list[str]]:
    """The phrase rules alone: (1 - prod(1 - w) over the rules that fire, their names)."""
    miss, fired = 1.0, []
    text = text.lower()
    for name, w, pat in _INJECTION_RULES:
        if pat.search(text):
            miss *= 1 - w
            fired.append(name)
    return 1 - miss, fired


def classifier_score(text: str, model: str | None = None) -> float:
    """The classifier's probability, shifted on the logit scale so that its own threshold becomes 0.5."""
    m = load_classifier(model)
    t = min(max(m.threshold, 1e-6), 1 - 1e-6)  # a threshold of 0 or 1 (a degenerate training) stays finite
    z = m.logit(text) - math.log(t / (1 - t))
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def load_classifier(model: str | None = None) -> InjectionModel:
    """The classifier at `model` (default: the shipped one), loaded once; ConfigError if it cannot be read."""
    try:
        return injection_model.load(model)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"not an injection classifier from `tunelab guard train`: {e}", file=model,
                          field="classifier_model") from None  # fmt: skip


def injection_score(text: str, rule: GuardRule | None = None) -> tuple[float, list[str], float | None]:
    """(score, rules that fired, classifier's shifted score or None when it is off) under `rule`'s settings
    (default: rules and the shipped classifier)."""
    score, fired = rule_score(text)
    clf = None
    if rule is None or rule.classifier:
        clf = classifier_score(text, rule.classifier_model if rule else None)
        score = max(score, clf)
    return score, fired, clf


def _injection_detail(score: float, rules: list[str], clf: float | None) -> dict[str, Any]:
    """What a decision and a scan report of the injection guard (scores to 4 places)."""
    return {"score": round(score, 4), "rules": rules, "classifier": None if clf is None else round(clf, 4)}


def moderation(text: str, categories: list[str] | None = None) -> list[str]:
    text = text.lower()
    return [c for c, pat in _MODERATION.items() if (categories is None or c in categories) and pat.search(text)]


def scan(text: str, rule: GuardRule | None = None) -> dict[str, Any]:
    """What `tunelab guard scan` prints for one text (all guards, no actions; `rule`: the injection guard's
    threshold and classifier settings)."""
    rule = rule or GuardRule()
    score, rules, clf = injection_score(text, rule)
    counts: dict[str, int] = {}
    for f in find_pii(text):
        counts[f.type] = counts.get(f.type, 0) + 1
    cats = moderation(text)
    return {
        "injection": {"flagged": score >= rule.threshold, **_injection_detail(score, rules, clf)},
        "pii": counts,
        "moderation": {"flagged": bool(cats), "categories": cats},
    }


def check_input(text: str, cfg: GuardConfig) -> tuple[str, list[Decision], bool]:
    """(text to send on, decisions, blocked?) for one request's user-supplied text."""
    decisions: list[Decision] = []
    blocked = False
    if cfg.injection.action != "off":
        score, rules, clf = injection_score(text, cfg.injection)
        if score >= cfg.injection.threshold:
            decisions.append(Decision("injection", cfg.injection.action, _injection_detail(score, rules, clf)))
            blocked = cfg.injection.action == "block"
    out, b = _pii(text, "pii_input", cfg.pii_input, decisions)
    return out, decisions, _moderation(text, "moderation_input", cfg.moderation_input, decisions) or b or blocked


def check_output(text: str, cfg: GuardConfig) -> tuple[str, list[Decision], bool]:
    """(text to send back, decisions, blocked?) for the model's answer so far."""
    decisions: list[Decision] = []
    out, blocked = _pii(text, "pii_output", cfg.pii_output, decisions)
    return out, decisions, _moderation(text, "moderation_output", cfg.moderation_output, decisions) or blocked


def _pii(text: str, guard: str, rule: GuardRule, decisions: list[Decision]) -> tuple[str, bool]:
    """PII and secrets under `rule`: (the text, redacted when the action is redact; blocked?)."""
    if rule.action == "off":
        return text, False
    red, found = redact(text)
    if not found:
        return text, False
    decisions.append(Decision(guard, rule.action, {"types": sorted({f.type for f in found})}))
    return (red if rule.action == "redact" else text), rule.action == "block"


def _moderation(text: str, guard: str, rule: GuardRule, decisions: list[Decision]) -> bool:
    """Moderation categories under `rule`; blocked?"""
    if rule.action == "off":
        return False
    cats = moderation(text, rule.categories)
    if not cats:
        return False
    decisions.append(Decision(guard, rule.action, {"categories": cats}))
    return rule.action == "block"


def text_of(line: str) -> str:
    """The text to scan in one line of a file: a JSON object's text/prompt/content/input field or its
    messages' contents, else the line itself."""
    import json

    line = line.rstrip("\n")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(obj, dict):
        for k in ("text", "prompt", "content", "input"):
            if isinstance(obj.get(k), str):
                return str(obj[k])
        msgs = obj.get("messages")
        if isinstance(msgs, list):
            return "\n".join(str(m.get("content", "")) for m in msgs if isinstance(m, dict))
    return line if not isinstance(obj, str) else obj
