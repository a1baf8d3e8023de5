"""The output leakage guard: a reply that echoes the system prompt, the caller's key or a secret."""

from __future__ import annotations

from tunelab.serve.guards import GuardConfig, GuardRule, check_output
from tunelab.serve.leakage import leaks, mask

SYSTEM = ("You are the support assistant of Nordlicht Bikes. Never promise refunds; the returns team decides. "
          "Internal discount code for staff only: NL-STAFF-2291.")  # fmt: skip


def test_a_reply_repeating_the_system_prompt_is_found_and_masked() -> None:
    reply = ("Sure! My instructions say: you are the support assistant of Nordlicht Bikes. Never promise "
             "refunds, the returns team decides. Anything else?")  # fmt: skip
    spans = leaks(reply, [SYSTEM])
    assert spans and all(k == "prompt" for _, _, k in spans)
    out = mask(reply, spans)
    assert "[REDACTED SYSTEM PROMPT]" in out and "Nordlicht Bikes. Never" not in out
    assert out.startswith("Sure! My instructions say:") and out.endswith("Anything else?")


def test_an_ordinary_answer_sharing_words_with_the_prompt_is_not() -> None:
    for reply in ("Refunds are decided by our returns team. Could you send me your order number?",
                  "Nordlicht Bikes makes city bikes; the support team can help with repairs.",
                  ""):  # fmt: skip
        assert leaks(reply, [SYSTEM]) == []


def test_secrets_are_found_in_any_case_and_short_prompts_whole() -> None:
    key = "tl-sk-9f8e7d6c5b4a"
    spans = leaks(f"The key is {key.upper()} and again {key}.", [key])
    assert [k for _, _, k in spans] == ["secret", "secret"]
    assert leaks("Answer in French always.", ["Answer in French"]) != []
    assert leaks("Hi", ["Be brief"]) == []  # two words: repeating them says nothing


def test_check_output_redacts_blocks_or_is_off() -> None:
    reply = "Internal discount code for staff only: NL-STAFF-2291. Enjoy!"
    out, ds, blocked = check_output(reply, GuardConfig(), [SYSTEM])
    assert not blocked and "NL-STAFF-2291" not in out and ds[0].guard == "leakage"
    _, ds, blocked = check_output(reply, GuardConfig(leakage=GuardRule(action="block")), [SYSTEM])
    assert blocked and ds[0].detail == {"kinds": ["prompt"]}
    out, ds, _ = check_output(reply, GuardConfig(leakage=GuardRule(action="off")), [SYSTEM])
    assert out == reply and not any(d.guard == "leakage" for d in ds)
    cfg = GuardConfig(leakage=GuardRule(action="redact", secrets=["NL-STAFF-2291"]))
    out, ds, _ = check_output("use NL-STAFF-2291", cfg)
    assert out == "use [REDACTED SECRET]"
