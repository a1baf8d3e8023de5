"""A labelled PII set built from templates: every kind of PII and secret the detectors know, in varied
sentences, and hard negatives that look like them (dates, order numbers, versions, prices, ISBNs...).

Values are generated (valid Luhn / IBAN / SSN where the real thing is valid), so the set can be any size.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass


@dataclass
class Labelled:
    text: str
    spans: list[tuple[str, int, int]]  # (type, start, end) of each planted PII value


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    for d in string.digits:
        cand = body + d
        total = 0
        for i, ch in enumerate(reversed(cand)):
            v = int(ch)
            if i % 2:
                v = v * 2 - 9 if v > 4 else v * 2
            total += v
        if total % 10 == 0:
            return cand
    raise AssertionError


def _iban(rng: random.Random) -> str:
    country, bban = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    if country in ("GB", "NL"):
        body = "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(
            rng.choice(string.digits) for _ in range(bban - 4)
        )
    else:
        body = "".join(rng.choice(string.digits) for _ in range(bban))
    moved = body + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    iban = f"{country}{check:02d}{body}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


def _value(kind: str, rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    a = lambda n, alphabet=string.ascii_letters + string.digits: "".join(rng.choice(alphabet) for _ in range(n))  # noqa: E731
    if kind == "EMAIL":
        user = rng.choice(["j.smith", "anna_k", "m.lee+work", "support", "x9.user"])
        return f"{user}{d(2)}@{rng.choice(['example.com', 'mail.co.uk', 'corp.example.org'])}"
    if kind == "CREDIT_CARD":
        num = _luhn_complete(rng.choice(["4", "51", "55", "37", "6011"]), rng.choice([16, 16, 15]), rng)
        sep = rng.choice(["", " ", "-"])
        return sep.join(num[i : i + 4] for i in range(0, len(num), 4)) if sep else num
    if kind == "IBAN":
        return _iban(rng)
    if kind == "PHONE":
        return rng.choice(
            [
                f"+44 20 {d(4)} {d(4)}",
                f"+1 {d(3)}-{d(3)}-{d(4)}",
                f"({d(3)}) {d(3)}-{d(4)}",
                f"07{d(3)} {d(6)}",
                f"+49 30 {d(8)}",
                f"{rng.randint(201, 989)}-{d(3)}-{d(4)}",
            ]
        )
    if kind == "IP_ADDRESS":
        if rng.random() < 0.8:
            return ".".join(str(rng.randint(1, 254)) for _ in range(4))
        return ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))
    if kind == "NATIONAL_ID":
        return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    if kind == "AWS_KEY":
        return "AKIA" + a(16, string.ascii_uppercase + string.digits)
    if kind == "GITHUB_TOKEN":
        return "ghp_" + a(36)
    if kind == "JWT":
        return "eyJ" + a(20, string.ascii_letters + string.digits + "_-") + ".eyJ" + a(30) + "." + a(43)
    if kind == "API_KEY":
        return "sk-" + a(40)
    raise ValueError(kind)


POSITIVE_TEMPLATES = {
    "EMAIL": ["Please reply to {v} by Friday.", "Contact: {v}", "cc {v} on the thread"],
    "CREDIT_CARD": ["Card number {v}, exp 09/27.", "charged to {v} yesterday", "Visa: {v}"],
    "IBAN": ["Transfer to IBAN {v} please.", "Account {v} (business)"],
    "PHONE": ["Call me on {v} after six.", "phone: {v}", "Reach the desk at {v}."],
    "IP_ADDRESS": ["Requests from {v} were blocked.", "host {v} is unreachable"],
    "NATIONAL_ID": ["SSN {v} is on the form.", "social security number: {v}"],
    "AWS_KEY": ["aws_access_key_id = {v}", "leaked key {v} in the repo"],
    "GITHUB_TOKEN": ["token {v} was pushed", "GH_TOKEN={v}"],
    "JWT": ["Authorization: Bearer {v}", "session {v}"],
    "API_KEY": ["OPENAI_API_KEY={v}", "the key {v} is revoked"],
}

NEGATIVES = [
    lambda r: f"The meeting moved to {r.randint(2000, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}.",
    lambda r: f"Order #{r.randint(10**9, 10**10 - 1)} has shipped.",
    lambda r: f"order number {r.randint(200, 999)}-{r.randint(100, 999)}-{r.randint(1000, 9999)} is delayed",
    lambda r: f"Invoice ref {r.randint(20200101, 20291231)}-{r.randint(1, 9999):04d}",
    lambda r: f"Upgrade to version {r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 20)}.{r.randint(0, 99)} now",
    lambda r: f"ISBN 978-{r.randint(0, 9)}-{r.randint(10, 99)}-{r.randint(100000, 999999)}-{r.randint(0, 9)}",
    lambda r: f"It costs ${r.randint(1, 999)},{r.randint(100, 999)},{r.randint(100, 999)}.{r.randint(10, 99)}.",
    lambda r: f"Population {r.randint(1, 99)},{r.randint(100, 999)},{r.randint(100, 999)} in {r.randint(1990, 2024)}",
    lambda r: f"The score was {r.randint(0, 5)}-{r.randint(0, 5)} in front of {r.randint(10, 90)},000 fans.",
    lambda r: f"Born {r.randint(1, 28):02d}/{r.randint(1, 12):02d}/{r.randint(1940, 2010)} in Leeds.",
    lambda r: f"Section {r.randint(1, 30)}.{r.randint(1, 9)}.{r.randint(1, 9)} of the act applies.",
    lambda r: f"Coordinates {r.uniform(-90, 90):.4f}, {r.uniform(-180, 180):.4f}",
    lambda r: (
        f"Train {r.randint(100, 999)} leaves at {r.randint(0, 23):02d}:{r.randint(0, 59):02d} "
        f"from platform {r.randint(1, 12)}."
    ),
    lambda r: f"the password policy needs {r.randint(8, 16)} characters",
    lambda r: f"Tracking {r.randint(10**11, 10**12 - 1)} via courier",
    lambda r: f"Card ending in {r.randint(1000, 9999)} was declined.",
]


def labelled_pii_set(n: int = 2000, seed: int = 0) -> list[Labelled]:
    """About half positives (one PII value in a sentence) and half hard negatives."""
    rng = random.Random(seed)
    kinds = list(POSITIVE_TEMPLATES)
    out = []
    for i in range(n):
        if i % 2 == 0:
            kind = kinds[(i // 2) % len(kinds)]
            value = _value(kind, rng)
            template = rng.choice(POSITIVE_TEMPLATES[kind])
            start = template.index("{v}")
            out.append(Labelled(template.format(v=value), [(kind, start, start + len(value))]))
        else:
            out.append(Labelled(rng.choice(NEGATIVES)(rng), []))
    return out
