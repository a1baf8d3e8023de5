from __future__ import annotations

import pytest

from tunelab.data.pii import find_pii, iban_ok, luhn_ok, redact


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to jane.doe+news@example.co.uk today", "EMAIL", "jane.doe+news@example.co.uk"),
        ("card 4111 1111 1111 1111 expires", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("card 5500-0000-0000-0004.", "CREDIT_CARD", "5500-0000-0000-0004"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN", "GB82 WEST 1234 5698 7654 32"),
        ("pay DE89370400440532013000 now", "IBAN", "DE89370400440532013000"),
        ("server at 192.168.10.254 is down", "IP_ADDRESS", "192.168.10.254"),
        ("v6 2001:db8:85a3::8a2e:370:7334 ok", "IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"),
        ("SSN 123-45-6789 on file", "NATIONAL_ID", "123-45-6789"),
        ("NI number AB 12 34 56 C", "NATIONAL_ID", "AB 12 34 56 C"),
        ("call me on +44 20 7946 0958", "PHONE", "+44 20 7946 0958"),
        ("phone: 07700 900123", "PHONE", "07700 900123"),
        ("reach us at (555) 123-4567", "PHONE", "(555) 123-4567"),
        ("office 415-555-0132 any time", "PHONE", "415-555-0132"),
        ("key AKIAIOSFODNN7EXAMPLE leaked", "AWS_KEY", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_" + "a1B2" * 9 + " here", "GITHUB_TOKEN", "ghp_" + "a1B2" * 9),
        ("export OPENAI_API_KEY=sk-proj-AbC123dEf456GhI789jKl012", "API_KEY", "sk-proj-AbC123dEf456GhI789jKl012"),
        ('password = "Zx9!kQ2mP7vR4tW8"', "SECRET", None),
        ("db_password: hT5kLm9QzX2vB7nR4w", "SECRET", "hT5kLm9QzX2vB7nR4w"),
    ],
)
def test_detects(text: str, kind: str, value: str | None) -> None:
    found = find_pii(text)
    assert [f.type for f in found] == [kind], found
    if value is not None:
        assert found[0].text == value


def test_detects_jwt_and_private_key_blocks() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    assert [f.type for f in find_pii(f"Authorization: Bearer {jwt}")] == ["JWT"]
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----"
    assert [f.type for f in find_pii(f"here:\n{key}\nend")] == ["PRIVATE_KEY"]


@pytest.mark.parametrize(
    "text",
    [
        "The meeting is on 2024-01-15 at 10:30.",
        "Born 15/01/1990 in Leeds.",
        "Order #1234567890 shipped.",
        "order number 555-123-4567 is on its way",  # shaped like a phone, but it is an order number
        "Invoice ref 20240115-0042",
        "Upgrade to version 1.2.3.4 now",
        "ISBN 978-3-16-148410-0",
        "It costs $1,234,567.89 in total.",
        "Population 67,081,000 in 2023",
        "The score was 3-1 after 90 minutes, 45,000 fans.",
        "card 4111 1111 1111 1112 is not valid",  # fails Luhn
        "GB82 WEST 1234 5698 7654 33",  # fails mod-97
        "SSN 000-12-3456 is not issued",
        "999.999.999.999 is not an address",
        "the token is short: abc123",
        "password: correcthorsebattery",  # one character class, low entropy
        "Call of Duty sold 1 million copies",
        "Section 12.4.3 of the act",
        "Coordinates 51.5074, -0.1278",
        "Tel Aviv is a city",
    ],
)
def test_hard_negatives(text: str) -> None:
    assert find_pii(text) == []


def test_redact_writes_typed_placeholders() -> None:
    text, found = redact("Mail bob@example.com or call +1 415 555 0132; card 4111111111111111.")
    assert text == "Mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>."
    assert [f.type for f in found] == ["EMAIL", "PHONE", "CREDIT_CARD"]


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("XX82WEST12345698765432")


def test_the_cheap_prefilter_never_hides_a_finding() -> None:
    # texts with few digits that a detector still matches: an IPv6 address, an e-mail, a secret, a key
    for text, kind in [("host fe80:abcd:ef01:abcd::1 up", "IP_ADDRESS"), ("mail a.b@example.org", "EMAIL"),
                       ("password = Xk9vQ2mLp7Rt", "SECRET"), ("key AKIAABCDEFGHIJKLMNOP", "AWS_KEY")]:  # fmt: skip
        assert kind in [f.type for f in find_pii(text)], text
    assert find_pii("plain words, no digits or markers at all") == []
