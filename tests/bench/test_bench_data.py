"""The data benchmark at a small scale: it runs, measures what it claims, and its ground truth is right."""

from __future__ import annotations

from pathlib import Path

from tunelab.bench.data import bench_data, make_corpus, true_jaccard


def test_planted_pairs_have_the_similarity_they_claim(tmp_path: Path) -> None:
    truth = make_corpus(2000, tmp_path)
    texts = truth["texts"]
    assert all(texts[c].casefold().split() == texts[s].casefold().split() for c, s in truth["exact"])
    assert min(true_jaccard(texts[c], texts[s]) for c, s in truth["near"]) >= 0.8
    assert max(true_jaccard(texts[c], texts[s]) for c, s in truth["far"]) < 0.6


def test_bench_reports_every_figure(tmp_path: Path) -> None:
    r = bench_data(tmp_path, records=3000, peer=False)
    for key in ("records_per_s", "near_dup_precision", "near_dup_recall", "pii_precision", "pii_recall", "peak_rss_gb"):
        assert r[key] > 0, key
    assert r["audit_found"]["exact_in_train"] == r["planted"]["exact"]
    assert r["contamination_recall"] == {"exact": 1.0, "near": 1.0, "ngram13": 1.0}
    assert (tmp_path / "bench-data.json").is_file()
