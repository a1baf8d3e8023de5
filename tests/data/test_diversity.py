from __future__ import annotations

from collections import Counter

from tunelab.data.diversity import diversity_report, languages

EN = [
    "The committee will publish its findings on the new railway line next month.",
    "Shares in the company rose sharply after it reported better than expected profits.",
    "The striker scored twice in the second half to secure a comfortable victory.",
]
DE = [
    "Der Ausschuss wird seine Ergebnisse zur neuen Bahnstrecke im nächsten Monat veröffentlichen.",
    "Die Aktien des Unternehmens stiegen deutlich, nachdem es bessere Gewinne als erwartet meldete.",
]
FR = ["Le comité publiera ses conclusions sur la nouvelle ligne ferroviaire le mois prochain."]


def test_languages_are_identified_and_a_mix_is_a_warning() -> None:
    assert languages(EN * 10) == {"en": 30}
    assert languages(DE + FR) == {"de": 2, "fr": 1}
    assert languages(["ok", "x = f(3)"]).get("unknown") == 2  # too short or not language: not guessed
    one = diversity_report(EN * 10, [12] * 30, Counter(), 0, 30)
    assert not [w for w in one["warnings"] if "languages" in w]
    mixed = diversity_report(EN * 4 + DE * 3 + FR, [12] * 19, Counter(), 0, 19)
    assert mixed["languages"] == {"en": 12, "de": 6, "fr": 1}
    assert [w for w in mixed["warnings"] if "mixed languages" in w]
