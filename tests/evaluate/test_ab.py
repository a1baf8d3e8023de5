"""Blind A/B export and import: the raters never see which run is which; the key maps ratings back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tunelab.errors import DataError
from tunelab.evaluate.ab import export_ab, import_ab


def _run(path: Path, tag: str, n: int = 30) -> Path:
    path.mkdir(parents=True)
    rows = [{"id": f"x{i}", "input": f"q{i}", "reference": "r", "output": f"{tag}-{i}", "scores": {}} for i in range(n)]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "metrics.json").write_text("{}")
    return path


def test_export_is_blind_and_import_maps_ratings_back(tmp_path: Path) -> None:
    a, b = _run(tmp_path / "a", "A"), _run(tmp_path / "b", "B")
    r = export_ab(a, b, tmp_path / "ab", seed=3)
    assert r["pairs"] == 30
    with open(tmp_path / "ab" / "ab.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    firsts = {row["response_1"].split("-")[0] for row in rows}
    assert firsts == {"A", "B"}  # shuffled per pair
    page = (tmp_path / "ab" / "ab.html").read_text()
    assert "http" not in page.replace("http-equiv", "") and "ab-key" not in page  # self-contained, no key in it
    # a rater who always prefers B's answer, whichever side it is on, and ties the last five
    with open(tmp_path / "ratings.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pair", "rating"])
        for k, row in enumerate(rows):
            w.writerow([row["pair"], "tie" if k >= 25 else ("1" if row["response_1"].startswith("B") else "2")])
    res = import_ab(tmp_path / "ab", tmp_path / "ratings.csv", resamples=2000)
    assert (res["b_wins"], res["a_wins"], res["ties"]) == (25, 0, 5)
    assert res["b_win_rate"] == pytest.approx(27.5 / 30)
    assert res["p_value"] < 1e-6 and res["ci95"][0] > 0.8


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [("pair,rating\np0001,maybe\n", 2, "rating"), ("pair,rating\nzzz,1\n", 2, "pair"), ("p,r\n", 1, None)],
)
def test_bad_ratings_name_line_and_field(tmp_path: Path, content: str, line: int, field: str | None) -> None:
    export_ab(_run(tmp_path / "a", "A"), _run(tmp_path / "b", "B"), tmp_path / "ab")
    (tmp_path / "r.csv").write_text(content)
    with pytest.raises(DataError) as e:
        import_ab(tmp_path / "ab", tmp_path / "r.csv")
    assert (e.value.line, e.value.field) == (line, field)


def test_agreement_gives_cohens_kappa_per_pair_of_raters() -> None:
    from tunelab.evaluate.ab import agreement

    # 4 shared pairs, 3 equal: po = 0.75; frequencies a: {1: .5, 0: .25, .5: .25}, b: {1: .25, 0: .25, .5: .5}
    a = {"p1": 1.0, "p2": 1.0, "p3": 0.0, "p4": 0.5, "p9": 1.0}
    b = {"p1": 1.0, "p2": 0.5, "p3": 0.0, "p4": 0.5}
    r = agreement({"ann": a, "bob": b, "cy": {}})
    (row,) = r["pairs_of_raters"]
    pe = 0.5 * 0.25 + 0.25 * 0.25 + 0.25 * 0.5
    assert (row["a"], row["b"], row["pairs"], row["agreement"]) == ("ann", "bob", 4, 0.75)
    assert row["kappa"] == pytest.approx((0.75 - pe) / (1 - pe))
    assert r["mean"]["kappa"] == pytest.approx(row["kappa"])
