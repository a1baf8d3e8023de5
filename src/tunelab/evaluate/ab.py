"""Blind A/B pairs for human raters, and their ratings read back.

`export_ab` writes, for items two eval runs share, both answers in a seeded random order:
  ab.csv        pair, prompt, response_1, response_2, rating (empty: 1, 2 or tie)
  ab.html       the same as a self-contained page (no network): raters click, then download ratings.csv
  ab-key.json   which response is which run (keep it away from the raters)
`import_ab` reads a ratings CSV (pair, rating) back through the key and reports the win rate of B over A
(ties count half) with a bootstrap CI and a two-sided sign test on the decisive ratings.
"""

from __future__ import annotations

import csv
import html
import json
import random
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.evaluate.compare import load_run
from tunelab.evaluate.stats import mcnemar_exact, paired_bootstrap_ci
from tunelab.fsutil import atomic_write_json, atomic_write_text

RATINGS = ("1", "2", "tie")


def export_ab(a_dir: Path, b_dir: Path, out: Path, *, n: int | None = None, seed: int = 0) -> dict[str, Any]:
    _, sa = load_run(a_dir)
    _, sb = load_run(b_dir)
    ids = sorted(set(sa[""]) & set(sb[""]))
    if not ids:
        raise DataError("the two runs share no item ids", file=b_dir)
    rng = random.Random(seed)
    rng.shuffle(ids)
    ids = ids[:n] if n else ids
    pairs, key = [], {}
    for k, i in enumerate(ids, start=1):
        a_first = rng.random() < 0.5
        ra, rb = str(sa[""][i].get("output") or ""), str(sb[""][i].get("output") or "")
        pid = f"p{k:04d}"
        pairs.append(
            {
                "pair": pid,
                "prompt": str(sa[""][i].get("input") or ""),
                "response_1": ra if a_first else rb,
                "response_2": rb if a_first else ra,
            }
        )
        key[pid] = {"id": i, "response_1": "A" if a_first else "B"}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "ab.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["pair", "prompt", "response_1", "response_2", "rating"])
        w.writeheader()
        for p in pairs:
            w.writerow({**p, "rating": ""})
    atomic_write_text(out / "ab.html", _page(pairs))
    atomic_write_json(out / "ab-key.json", {"a": str(a_dir), "b": str(b_dir), "seed": seed, "pairs": key})
    return {
        "pairs": len(pairs),
        "csv": str(out / "ab.csv"),
        "html": str(out / "ab.html"),
        "key": str(out / "ab-key.json"),
    }


def read_scores(ab_dir: Path, ratings: Path) -> dict[str, float]:
    """{pair: score of B} from a ratings CSV read back through the key: 1.0 B won, 0.0 A won, 0.5 a tie."""
    key_path = ab_dir / "ab-key.json"
    if not key_path.is_file():
        raise DataError("no ab-key.json: export the pairs with `tunelab eval export-ab` first", file=ab_dir)
    key = json.loads(key_path.read_text(encoding="utf-8"))["pairs"]
    if not ratings.is_file():
        raise DataError("no such file", file=ratings)
    scores: dict[str, float] = {}
    with open(ratings, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"pair", "rating"} <= set(reader.fieldnames):
            raise DataError("needs the columns pair and rating", file=ratings, line=1)
        for row in reader:
            line = reader.line_num
            pid, r = (row.get("pair") or "").strip(), (row.get("rating") or "").strip().lower()
            if not r:
                continue  # not rated (yet)
            if pid not in key:
                raise DataError(f"unknown pair {pid!r}", file=ratings, line=line, field="pair")
            if r not in RATINGS:
                raise DataError(f"rating must be 1, 2 or tie, not {r!r}", file=ratings, line=line, field="rating")
            if pid in scores:
                raise DataError(f"pair {pid!r} rated twice", file=ratings, line=line, field="pair")
            if r == "tie":
                scores[pid] = 0.5
            else:
                winner_is_a = (r == "1") == (key[pid]["response_1"] == "A")
                scores[pid] = 0.0 if winner_is_a else 1.0
    return scores


def import_ab(ab_dir: Path, ratings: Path, *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    scores = read_scores(ab_dir, ratings)
    if not scores:
        raise DataError("no ratings in the file", file=ratings)
    return summarise(list(scores.values()), resamples=resamples, seed=seed)


def summarise(xs: list[float], *, resamples: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Win rate of B over A (ties half) with a bootstrap CI, and the sign test on the decisive ratings."""
    b_wins, a_wins = sum(1 for x in xs if x == 1.0), sum(1 for x in xs if x == 0.0)
    lo, hi = paired_bootstrap_ci([0.0] * len(xs), xs, resamples=resamples, seed=seed)
    return {
        "rated": len(xs),
        "b_wins": b_wins,
        "a_wins": a_wins,
        "ties": len(xs) - a_wins - b_wins,
        "b_win_rate": sum(xs) / len(xs),
        "ci95": [lo, hi],
        "p_value": mcnemar_exact(a_wins, b_wins),  # the sign test on decisive ratings
        "test": "two-sided sign test on decisive ratings (ties count half in the rate)",
    }


def agreement(raters: dict[str, dict[str, float]]) -> dict[str, Any]:
    """How far raters agree, pair by pair of raters on the pairs both rated: the share of equal ratings and
    Cohen's kappa (agreement beyond what their own rating frequencies give by chance); the mean over rater pairs."""
    names = sorted(raters)
    rows: list[dict[str, Any]] = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sorted(set(raters[a]) & set(raters[b]))
            if not common:
                continue
            xa, xb = [raters[a][p] for p in common], [raters[b][p] for p in common]
            po = sum(1 for x, y in zip(xa, xb, strict=True) if x == y) / len(common)
            cats = (0.0, 0.5, 1.0)
            pe = sum((xa.count(c) / len(xa)) * (xb.count(c) / len(xb)) for c in cats)
            kappa = (po - pe) / (1 - pe) if pe < 1 else (1.0 if po == 1 else 0.0)
            rows.append({"a": a, "b": b, "pairs": len(common), "agreement": po, "kappa": kappa})
    mean = {k: sum(float(r[k]) for r in rows) / len(rows) for k in ("agreement", "kappa")} if rows else None
    return {"pairs_of_raters": rows, "mean": mean}


def _page(pairs: list[dict[str, str]]) -> str:
    cards = []
    for p in pairs:
        pid = html.escape(p["pair"])
        radios = "".join(
            f"<label><input type='radio' name='{pid}' value='{v}'> {lab}</label> "
            for v, lab in (("1", "1 is better"), ("2", "2 is better"), ("tie", "tie"))
        )
        cards.append(
            f"<div class='pair'><h3>{pid}</h3><pre class='prompt'>{html.escape(p['prompt'])}</pre>"
            f"<div class='row'><div><b>1</b><pre>{html.escape(p['response_1'])}</pre></div>"
            f"<div><b>2</b><pre>{html.escape(p['response_2'])}</pre></div></div>{radios}</div>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tunelab A/B rating</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto}pre{white-space:pre-wrap;"
        "background:#f6f6f6;padding:.6em}.row{display:flex;gap:1em}.row>div{flex:1}.pair{border-bottom:1px solid "
        "#ddd;padding-bottom:1em}.prompt{background:#eef}</style></head><body><h1>Which answer is better?</h1>"
        "<p>The order of the two answers is random for every pair. Choose one per pair, then download the ratings "
        "and send the file back.</p>" + "".join(cards) + "<p><button onclick='dl()'>Download ratings.csv</button>"
        "</p><script>function dl(){const names=[...new Set([...document.querySelectorAll('input[type=radio]')]"
        ".map(e=>e.name))];let s='pair,rating\\n';for(const n of names){const c=document.querySelector("
        "'input[name=\"'+n+'\"]:checked');s+=n+','+(c?c.value:'')+'\\n'}const a=document.createElement('a');"
        "a.href=URL.createObjectURL(new Blob([s],{type:'text/csv'}));a.download='ratings.csv';a.click()}</script>"
        "</body></html>"
    )
