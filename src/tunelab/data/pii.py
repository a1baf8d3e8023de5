"""PII and secret detection with typed redaction. Precision matters as much as recall: every detector
validates what its pattern finds (Luhn, IBAN mod-97, SSN rules, octet ranges, entropy, context words),
so a date, a version string or an order number is not reported as a phone number or an IP address.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

TYPES = (
    "PRIVATE_KEY", "AWS_KEY", "GITHUB_TOKEN", "JWT", "API_KEY", "SECRET", "EMAIL", "IBAN", "CREDIT_CARD",
    "NATIONAL_ID", "IP_ADDRESS", "PHONE",
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    type: str
    start: int
    end: int
    text: str


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26, "IT": 27, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "TR": 26,
}  # fmt: skip


def iban_ok(raw: str) -> bool:
    s = raw.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


_CTX_SECRET = re.compile(r"(?i)(?:secret|token|api[_-]?key|apikey|passw(?:or)?d|pwd|auth|credential)s?\W{0,3}$")
_CTX_PHONE = re.compile(r"(?i)(?:phone|tel|mobile|cell|call|fax|whatsapp|sms|ring|contact)\w*\W{0,12}$")
_CTX_VERSION = re.compile(r"(?i)(?:version|ver|v|release|build)\W{0,2}$")


def _before(text: str, start: int, n: int = 40) -> str:
    return text[max(0, start - n) : start]


def _ok_card(m: re.Match[str], text: str) -> bool:
    d = re.sub(r"\D", "", m.group())
    return 13 <= len(d) <= 19 and luhn_ok(d) and bool(re.match(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5)", d))


def _ok_ssn(m: re.Match[str], text: str) -> bool:
    a, b, c = m.group(1), m.group(2), m.group(3)
    return a not in ("000", "666") and not a.startswith("9") and b != "00" and c != "0000"


def _ok_ip(m: re.Match[str], text: str) -> bool:
    try:
        addr = ipaddress.ip_address(m.group())
    except ValueError:
        return False
    # "version 1.2.3.4" is a version, not an address
    return not (addr.version == 4 and _CTX_VERSION.search(_before(text, m.start(), 12)))


def _ok_phone(m: re.Match[str], text: str) -> bool:
    s = m.group()
    d = re.sub(r"\D", "", s)
    if not 9 <= len(d) <= 15 or len(set(d)) == 1:
        return False
    if re.fullmatch(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}", s):
        return False  # a date
    before = _before(text, m.start())
    not_phone = r"(?i)(?:order|invoice|ref|reference|account|acct|isbn|tracking|serial|id|no\.?|#)"
    if re.search(not_phone + r"(?:\s+(?:number|num|no\.?|id|#))?\W{0,3}$", before):
        return False
    if s.startswith("+") or "(" in s or _CTX_PHONE.search(before):
        return True
    # without a '+', brackets or a context word, only the common national shapes count
    return bool(re.fullmatch(r"\d{3}[-. ]\d{3}[-. ]\d{4}|0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}", s))


def _ok_generic_secret(m: re.Match[str], text: str) -> bool:
    v = m.group("val")
    classes = sum(bool(re.search(p, v)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    return classes >= 2 and entropy(v) >= 3.5


Validator = Callable[[re.Match[str], str], bool]
_SECRET_WORDS = ("secret", "token", "key", "passw", "pwd", "auth", "credential")
# Every literal a detector's gate asks for, grouped under one character each literal contains: a text without
# that character (one memchr-speed test) is not searched for the group's literals at all.
_LITERALS: dict[str, tuple[str, ...]] = {
    "A": ("AKIA", "ASIA", "AIza"),
    "_": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk_live_"),
    "-": ("PRIVATE KEY-----", "sk-", "xox"),
    "J": ("eyJ",),
    ":": ("::",),
}
_DIGITS = b"0123456789"


@dataclass(frozen=True)
class _Facts:
    """Cheap facts about a text, computed once, that decide which detectors can possibly match."""

    digits: int
    at: bool
    assign: bool  # a secret keyword followed somewhere by ':' or '='
    text: str
    literals: frozenset[str]

    @classmethod
    def of(cls, text: str) -> _Facts | None:
        """None when no detector can match (most texts): the caller stops there."""
        raw = text.encode("utf-8", "surrogatepass")
        digits = len(raw) - len(raw.translate(None, _DIGITS))
        at = "@" in text
        assign = ("=" in text or ":" in text) and any(w in text.lower() for w in _SECRET_WORDS)
        literals = frozenset(n for c, group in _LITERALS.items() if c in text for n in group if n in text)
        if digits < 4 and not (at or assign or literals or (digits >= 2 and ":" in text)):
            return None  # every gate below needs one of these
        return cls(digits, at, assign, text, literals)

    def has(self, *needles: str) -> bool:
        return not self.literals.isdisjoint(needles)


Gate = Callable[[_Facts], bool]
_DETECTORS: list[tuple[str, re.Pattern[str], Validator | None, Gate]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )?PRIVATE KEY-----"),
     None, lambda f: f.has("PRIVATE KEY-----")),
    ("AWS_KEY", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), None, lambda f: f.has("AKIA", "ASIA")),
    ("GITHUB_TOKEN", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})\b"), None,
     lambda f: f.has("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), None,
     lambda f: f.has("eyJ")),
    ("API_KEY", re.compile(r"\b(?:sk-(?:proj-)?[A-Za-z0-9_-]{20,}|sk_live_[0-9a-zA-Z]{20,}"
                           r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"), None,
     lambda f: f.has("sk-", "sk_live_", "xox", "AIza")),
    ("SECRET", re.compile(r"(?i)(?:secret|token|api[_-]?key|apikey|passw(?:or)?d|pwd|auth|credential)s?[\"']?"
                          r"\s*[:=]\s*[\"']?(?P<val>[^\s\"'`,;]{12,})"), _ok_generic_secret, lambda f: f.assign),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None,
     lambda f: f.at),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
     lambda m, t: iban_ok(m.group()), lambda f: f.digits >= 6),
    ("CREDIT_CARD", re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"), _ok_card, lambda f: f.digits >= 13),
    ("NATIONAL_ID", re.compile(r"\b(\d{3})-(\d{2})-(\d{4})\b"), _ok_ssn, lambda f: f.digits >= 9 and "-" in f.text),
    ("NATIONAL_ID", re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"), None,
     lambda f: f.digits >= 6),
    ("IP_ADDRESS", re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])"), _ok_ip,
     lambda f: f.digits >= 4 and "." in f.text),
    ("IP_ADDRESS", re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){2,7}(?::|[0-9a-fA-F]{1,4})(?:[0-9a-fA-F:]*)(?![\w:])"),
     _ok_ip, lambda f: f.has("::") or (f.digits >= 2 and f.text.count(":") >= 3)),
    ("PHONE", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{2,5}(?:[ .-]\d{2,8}){1,4}(?![\w])"
                         r"|(?<![\w+])\+?\d{9,15}(?!\w)"), _ok_phone, lambda f: f.digits >= 9),
]  # fmt: skip


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping findings in text order; earlier detectors (more specific) win overlaps."""
    facts = _Facts.of(text)
    if facts is None:
        return []
    taken: list[tuple[int, int]] = []
    found: list[Finding] = []
    for kind, pattern, ok, gate in _DETECTORS:
        if not gate(facts):
            continue
        for m in pattern.finditer(text):
            if ok is not None and not ok(m, text):
                continue
            start, end = (m.start("val"), m.end("val")) if "val" in pattern.groupindex else m.span()
            if any(s < end and start < e for s, e in taken):
                continue
            taken.append((start, end))
            found.append(Finding(kind, start, end, text[start:end]))
    return sorted(found, key=lambda f: f.start)


def redact(text: str) -> tuple[str, list[Finding]]:
    """`text` with each finding replaced by a typed placeholder (`<EMAIL>`, `<CREDIT_CARD>`, ...)."""
    findings = find_pii(text)
    out, pos = [], 0
    for f in findings:
        out.append(text[pos : f.start])
        out.append(f"<{f.type}>")
        pos = f.end
    out.append(text[pos:])
    return "".join(out), findings
