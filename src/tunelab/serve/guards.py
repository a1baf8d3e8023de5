"""Guards on what goes into and comes out of a served model; `tunelab guard scan` runs the same offline.

- injection (input): by default the learned guard (`tunelab.guard.model`: the default model's first layers with
  a LoRA adapter trained by `tunelab guard train`), reading each message *as what it is*: a user turn as a
  possible direct injection or jailbreak, a tool result or an earlier assistant turn as untrusted data where an
  instruction aimed at the model is an (indirect) injection; system and developer messages are trusted and not
  scanned. Weighted phrase rules ("ignore the previous instructions", "you are now DAN", role markers, "reveal
  your system prompt"...) still run first, fast, but do not decide alone: their score is one input of the
  calibrated probability (`a + b * model + c * rules + d * ngram`, with the logit of an n-gram classifier
  trained beside the model; fitted on held-out data). The
  threshold is the guard's own (chosen for FPR <= 2% on held-out benign texts) unless `threshold` is set.
  `engine: ngram` keeps the first classifier (`injection_model`: hashed n-grams; the higher of its score and
  the rules'); `classifier: false` is the rules alone.
- pii (input and output): the data audit's detectors (e-mail, phone, cards with Luhn, IBAN checksum, IPs,
  national ids, keys and tokens); `redact` replaces findings with typed placeholders.
- moderation (output, and input if asked): a finished reply is read by the learned guard's reply question
  (`engine: learned`, the default: violence, self_harm, sexual, hate, cyber, privacy, misinformation, bias;
  trained on people-labelled replies, flagged at the guard's moderation threshold), together with phrase
  lexicons for what it was not trained on (weapons, drugs, sexual content involving minors). While a reply
  streams, and on input, the lexicons alone run (`engine: ngram` keeps them alone everywhere). The categories a
  deployment cares about are configurable.
- leakage (output): the request's system/developer prompt, the caller's API key, or a configured secret echoed
  back in the reply (`tunelab.serve.leakage`).
Each guard has an action: block (the request is refused with a 400 `content_filter` error, or the reply ends
with finish_reason `content_filter`), redact, or flag (served, and the decision logged). Every decision goes
to the ledger.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from tunelab.data.pii import find_pii, redact
from tunelab.errors import ConfigError
from tunelab.serve import injection_model
from tunelab.serve.injection_model import InjectionModel
from tunelab.serve.leakage import leaks, mask

if TYPE_CHECKING:
    from tunelab.guard.model import LearnedGuard, Reading

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
    # injection only: the score that flags; None = the learned guard's calibrated threshold (0.5 otherwise)
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    classifier: bool = True  # injection only: a model as well as the rules (false: the rules alone)
    engine: Literal["learned", "ngram"] = "learned"  # injection: which model; moderation: learned or lexicons
    # injection only: a guard directory (learned) or .npz file (ngram) from `tunelab guard train`; None: shipped
    classifier_model: str | None = None
    categories: list[str] | None = None  # moderation only: None = all
    secrets: list[str] = Field(default_factory=list)  # leakage only: strings a reply must never contain


class GuardConfig(BaseModel):
    model_config = {"extra": "forbid"}
    injection: GuardRule = Field(default_factory=lambda: GuardRule(action="block"))
    pii_input: GuardRule = Field(default_factory=lambda: GuardRule(action="redact"))
    pii_output: GuardRule = Field(default_factory=lambda: GuardRule(action="redact"))
    moderation_input: GuardRule = Field(default_factory=lambda: GuardRule(action="flag"))
    moderation_output: GuardRule = Field(default_factory=lambda: GuardRule(action="flag"))
    leakage: GuardRule = Field(default_factory=lambda: GuardRule(action="redact"))
    # the usage ledger keeps this many characters of the text an injection or moderation decision was about,
    # with personal data redacted, as the incident log's sample (`tunelab govern evidence --store`); 0: none
    sample_chars: int = Field(160, ge=0, le=2000)


def sample(text: str, chars: int) -> str | None:
    """The start of `text` for the incident log: whitespace collapsed, personal data and secrets redacted."""
    if chars <= 0:
        return None
    short = " ".join(text.split())
    return redact(short[: chars + 64])[0][:chars]


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
    """The n-gram classifier's probability, shifted on the logit scale so that its own threshold becomes 0.5."""
    m = load_classifier(model)
    t = min(max(m.threshold, 1e-6), 1 - 1e-6)  # a threshold of 0 or 1 (a degenerate training) stays finite
    z = m.logit(text) - math.log(t / (1 - t))
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def load_classifier(model: str | None = None) -> InjectionModel:
    """The n-gram classifier at `model` (default: the shipped one), loaded once; ConfigError if unreadable."""
    try:
        return injection_model.load(model)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"not an injection classifier from `tunelab guard train`: {e}", file=model,
                          field="classifier_model") from None  # fmt: skip


def load_learned(model: str | None = None) -> LearnedGuard:
    """The learned guard at `model` (default: the shipped one), loaded once; ConfigError if it cannot load."""
    from tunelab.errors import ModelError
    from tunelab.guard.model import cached

    try:
        return cached(model)
    except (OSError, ValueError, KeyError, ModelError) as e:
        raise ConfigError(
            f"cannot load the learned guard ({e}); `engine: ngram` serves with the first guard instead",
            file=model,
            field="classifier_model",
        ) from None


def load_rule(rule: GuardRule) -> None:
    """Load what `rule`'s model needs now (a server fails at start, not on its first request)."""
    if rule.action != "off" and rule.classifier:
        (load_learned if rule.engine == "learned" else load_classifier)(rule.classifier_model)


def threshold_of(rule: GuardRule) -> float:
    if rule.threshold is not None:
        return rule.threshold
    return load_learned(rule.classifier_model).threshold if rule.classifier and rule.engine == "learned" else 0.5


# learned readings of recent (model, role, text): a conversation's earlier turns are not scored again
_SEEN: OrderedDict[tuple[str | None, str, str], Reading] = OrderedDict()
_SEEN_MAX = 4096


def _learned_readings(texts: Sequence[str], roles: Sequence[str], model: str | None) -> list[Reading]:
    keys = [(model, r, t) for t, r in zip(texts, roles, strict=True)]
    todo = [k for k in dict.fromkeys(keys) if k not in _SEEN]
    if todo:
        got = load_learned(model).read([k[2] for k in todo], [k[1] for k in todo])
        for k, v in zip(todo, got, strict=True):
            _SEEN[k] = v
            if len(_SEEN) > _SEEN_MAX:
                _SEEN.popitem(last=False)
    out = []
    for k in keys:
        _SEEN.move_to_end(k)
        out.append(_SEEN[k])
    return out


def injection_span(text: str, role: str, rule: GuardRule) -> tuple[int, int] | None:
    """[start, end) of the sentence where the learned guard's label first rises in `text` (read in `role`):
    where the instruction most likely is. None for another engine, or where the guard points nowhere."""
    from tunelab.guard.model import span_around

    if not rule.classifier or rule.engine != "learned":
        return None
    at = _learned_readings([text], [role], rule.classifier_model)[0].at
    return None if at is None else span_around(text, at)


def injection_scores(
    texts: Sequence[str], roles: Sequence[str] | None = None, rule: GuardRule | None = None
) -> list[tuple[float, list[str], float | None]]:
    """For each text read in its role ("user", "tool", "assistant"): (score, rules that fired, the model's own
    probability with no rule firing, or None when there is no model) under `rule`'s settings (default: the
    rules and the shipped learned guard). One batch for all texts."""
    rule = rule or GuardRule()
    roles = list(roles) if roles is not None else ["user"] * len(texts)
    ruled = [rule_score(t) for t in texts]
    if not rule.classifier:
        return [(sc, fired, None) for sc, fired in ruled]
    if rule.engine == "ngram":
        out: list[tuple[float, list[str], float | None]] = []
        for t, (sc, fired) in zip(texts, ruled, strict=True):
            clf = classifier_score(t, rule.classifier_model)
            out.append((max(sc, clf), fired, clf))
        return out
    guard = load_learned(rule.classifier_model)
    raw = [r.raw for r in _learned_readings(texts, roles, rule.classifier_model)]
    out = []
    for t, r, (sc, fired) in zip(texts, raw, ruled, strict=True):
        ng = guard.ngram.logit(t)
        out.append((guard.probability(r, sc, ng), fired, guard.probability(r, 0.0, ng)))
    return out


def injection_score(
    text: str, rule: GuardRule | None = None, role: str = "user"
) -> tuple[float, list[str], float | None]:
    """`injection_scores` for one text."""
    return injection_scores([text], [role], rule)[0]


def _where(text: str, role: str, rule: GuardRule, chars: int) -> dict[str, Any]:
    """Where a flagged text's instruction is, for a decision: `span` (characters) and `sample`, the sentence
    there (else the text's start), both redacted as the incident log is."""
    span = injection_span(text, role, rule)
    if span is None:
        return {"span": None, "sample": sample(text, chars)}
    return {"span": list(span), "sample": sample(text[span[0] : span[1]], chars)}


def _injection_detail(score: float, rules: list[str], clf: float | None) -> dict[str, Any]:
    """What a decision and a scan report of the injection guard (scores to 4 places)."""
    return {"score": round(score, 4), "rules": rules, "classifier": None if clf is None else round(clf, 4)}


def moderation(text: str, categories: list[str] | None = None) -> list[str]:
    """The phrase lexicons' categories."""
    text = text.lower()
    return [c for c, pat in _MODERATION.items() if (categories is None or c in categories) and pat.search(text)]


def reply_moderation(
    texts: Sequence[str], rule: GuardRule | None = None
) -> list[tuple[list[str], float, dict[str, float]]]:
    """For each finished reply: (categories, harm probability, each learned category's probability) from the
    learned guard's reply question (flagged at its moderation threshold, or `rule.threshold`: the likeliest
    category), with the lexicons' categories the model was not trained on."""
    from tunelab.guard.model import NONE

    rule = rule or GuardRule()
    guard = load_learned(rule.classifier_model)
    mod = guard.meta.get("moderation")
    if not mod:
        raise ConfigError("this guard has no moderation question; set `engine: ngram` for the lexicons alone",
                          file=rule.classifier_model, field="classifier_model")  # fmt: skip
    th = rule.threshold if rule.threshold is not None else float(mod["threshold"])
    out = []
    for text, probs in zip(texts, guard.moderate(texts), strict=True):
        harm = 1.0 - probs[NONE]
        learned = {c: p for c, p in probs.items() if c != NONE}
        cats = [max(learned, key=lambda c: learned[c])] if harm >= th else []
        cats += [c for c in moderation(text) if c not in learned and c not in cats]
        out.append(([c for c in cats if rule.categories is None or c in rule.categories], harm, learned))
    return out


def scan(text: str, rule: GuardRule | None = None, role: str = "user") -> dict[str, Any]:
    """What `tunelab guard scan` prints for one text read in `role` (all guards, no actions; `rule`: the
    injection guard's threshold and model settings)."""
    return scan_many([text], rule, [role])[0]


def scan_many(
    texts: Sequence[str], rule: GuardRule | None = None, roles: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """`scan` for several texts, their injection scores in one batch."""
    rule = rule or GuardRule()
    roles = list(roles) if roles is not None else ["user"] * len(texts)
    th = threshold_of(rule)
    # a model's reply ("reply") is read by the moderation question, and by the injection guard as data
    at = [i for i, r in enumerate(roles) if r == "reply"]
    replies: dict[int, dict[str, Any]] = {}
    if at and rule.classifier and rule.engine == "learned":
        found = reply_moderation([texts[i] for i in at], GuardRule(classifier_model=rule.classifier_model))
        replies = {i: {"categories": c, "score": round(h, 4)} for i, (c, h, _) in zip(at, found, strict=True)}
    inj = injection_scores(texts, ["tool" if r == "reply" else r for r in roles], rule)
    out: list[dict[str, Any]] = []
    for k, (text, role, (score, rules, clf)) in enumerate(zip(texts, roles, inj, strict=True)):
        counts: dict[str, int] = {}
        for f in find_pii(text):
            counts[f.type] = counts.get(f.type, 0) + 1
        mod = replies.get(k) or {"categories": moderation(text)}
        flagged = score >= th
        span = injection_span(text, "tool" if role == "reply" else role, rule) if flagged else None
        out.append({
            "injection": {"flagged": flagged, "role": role, **_injection_detail(score, rules, clf),
                          "span": None if span is None else list(span),
                          "excerpt": None if span is None else text[span[0] : span[1]]},
            "pii": counts,
            "moderation": {"flagged": bool(mod["categories"]), **mod},
        })  # fmt: skip
    return out


# how each chat role is read by the injection guard: system/developer are trusted (not scanned); a tool's
# output and an earlier assistant turn sent back by the client are data the model reads
SCAN_ROLE = {"user": "user", "tool": "tool", "function": "tool", "assistant": "tool"}


def check_chat(messages: Sequence[tuple[str, str]], cfg: GuardConfig) -> tuple[list[str], list[Decision], bool]:
    """(each message's text to send on, decisions, blocked?) for a conversation of (role, text): the injection
    guard on every untrusted message in its role, PII and moderation on the user's turns."""
    decisions: list[Decision] = []
    blocked = False
    texts = [t for _, t in messages]
    scanned = [i for i, (role, _) in enumerate(messages) if role in SCAN_ROLE]
    if cfg.injection.action != "off" and scanned:
        th = threshold_of(cfg.injection)
        roles = [SCAN_ROLE[messages[i][0]] for i in scanned]
        for i, (score, rules, clf) in zip(
            scanned, injection_scores([texts[i] for i in scanned], roles, cfg.injection), strict=True
        ):
            if score >= th:
                detail = {**_injection_detail(score, rules, clf), "role": messages[i][0], "message": i,
                          **_where(texts[i], SCAN_ROLE[messages[i][0]], cfg.injection, cfg.sample_chars)}  # fmt: skip
                decisions.append(Decision("injection", cfg.injection.action, detail))
                blocked = blocked or cfg.injection.action == "block"
    for i, (role, text) in enumerate(messages):
        if role != "user":
            continue
        texts[i], b = _pii(text, "pii_input", cfg.pii_input, decisions)
        mod = _moderation(text, "moderation_input", cfg.moderation_input, decisions, sample_chars=cfg.sample_chars)
        blocked = mod or b or blocked
    return texts, decisions, blocked


def check_input(text: str, cfg: GuardConfig) -> tuple[str, list[Decision], bool]:
    """(text to send on, decisions, blocked?) for one request's user-supplied text."""
    texts, decisions, blocked = check_chat([("user", text)], cfg)
    return texts[0], decisions, blocked


def check_output(
    text: str, cfg: GuardConfig, protected: Sequence[str] = (), *, final: bool = True
) -> tuple[str, list[Decision], bool]:
    """(text to send back, decisions, blocked?) for the model's answer so far (`final`: the whole of it);
    `protected`: the request's system prompts and the caller's key, which the reply must not echo (with
    `leakage.secrets`). The learned moderation reads the final reply; the lexicons run on every check."""
    decisions: list[Decision] = []
    out, blocked = _leakage(text, cfg.leakage, [*protected, *cfg.leakage.secrets], decisions)
    out, b = _pii(out, "pii_output", cfg.pii_output, decisions)
    mod = _moderation(out, "moderation_output", cfg.moderation_output, decisions, learned=final,
                      sample_chars=cfg.sample_chars)  # fmt: skip
    return out, decisions, mod or b or blocked


def _leakage(text: str, rule: GuardRule, protected: list[str], decisions: list[Decision]) -> tuple[str, bool]:
    if rule.action == "off" or not protected:
        return text, False
    found = leaks(text, protected)
    if not found:
        return text, False
    kinds = sorted({k for _, _, k in found})
    decisions.append(Decision("leakage", rule.action, {"kinds": kinds}))
    return (mask(text, found) if rule.action == "redact" else text), rule.action == "block"


def _pii(text: str, guard: str, rule: GuardRule, decisions: list[Decision]) -> tuple[str, bool]:
    """PII and secrets under `rule`: (the text, redacted when the action is redact; blocked?)."""
    if rule.action == "off":
        return text, False
    red, found = redact(text)
    if not found:
        return text, False
    decisions.append(Decision(guard, rule.action, {"types": sorted({f.type for f in found})}))
    return (red if rule.action == "redact" else text), rule.action == "block"


def _moderation(
    text: str, guard: str, rule: GuardRule, decisions: list[Decision], learned: bool = False, sample_chars: int = 0
) -> bool:
    """Moderation categories under `rule` (`learned`: a finished reply, read by the learned guard when the rule's
    engine is); blocked?"""
    if rule.action == "off":
        return False
    detail: dict[str, Any] = {}
    if learned and rule.engine == "learned" and rule.classifier and text.strip():
        cats, harm, _ = reply_moderation([text], rule)[0]
        detail["score"] = round(harm, 4)
    else:
        cats = moderation(text, rule.categories)
    if not cats:
        return False
    decisions.append(Decision(guard, rule.action, {"categories": cats, **detail, "sample": sample(text, sample_chars)}))
    return rule.action == "block"


def scan_lines(lines: Sequence[str], rule: GuardRule | None = None, role: str = "user") -> list[dict[str, Any]]:
    """`scan` for each line of a file: a line with `messages` is a conversation, whose untrusted messages are
    scanned in their roles and whose highest injection score is reported (with that message's role and index);
    any other line is one text read in `role`."""
    units: list[tuple[int, int | None, str, str]] = []  # (line, message index, role, text)
    for k, line in enumerate(lines):
        msgs = read_line(line)
        if isinstance(msgs, str):
            units.append((k, None, role, msgs))
            continue
        scanned = [(i, SCAN_ROLE[r], t) for i, (r, t) in enumerate(msgs) if r in SCAN_ROLE]
        units += [(k, i, r, t) for i, r, t in scanned] or [(k, None, role, "")]
    rows = scan_many([u[3] for u in units], rule, [u[2] for u in units])
    out: list[dict[str, Any] | None] = [None] * len(lines)
    for (k, i, _, _), row in zip(units, rows, strict=True):
        if i is not None:
            row["injection"]["message"] = i
        prev = out[k]
        if prev is None:
            out[k] = row
            continue
        if row["injection"]["score"] > prev["injection"]["score"]:
            prev["injection"] = row["injection"]
        for t, c in row["pii"].items():
            prev["pii"][t] = prev["pii"].get(t, 0) + c
        cats = sorted(set(prev["moderation"]["categories"]) | set(row["moderation"]["categories"]))
        prev["moderation"] = {"flagged": bool(cats), "categories": cats}
    return [r for r in out if r is not None]


def read_line(line: str) -> list[tuple[str, str]] | str:
    """One line of a file to scan, parsed once: a JSON object's `messages` as (role, text) pairs; else the text
    of its text/prompt/content/input field; else a JSON string, or the line itself."""
    import json

    line = line.rstrip("\n")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(obj, dict):
        msgs = obj.get("messages")
        if isinstance(msgs, list):
            return [(str(m.get("role", "user")), str(m["content"])) for m in msgs
                    if isinstance(m, dict) and isinstance(m.get("content"), str)]  # fmt: skip
        for k in ("text", "prompt", "content", "input"):
            if isinstance(obj.get(k), str):
                return str(obj[k])
    return obj if isinstance(obj, str) else line
