"""Reading and auditing image datasets: bad files quarantined with file, line and field; duplicates, overlap and
licence."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tunelab.data.licence import DataPolicy
from tunelab.images.audit import NearIndex, phash, run_image_audit
from tunelab.images.data import ImageItem, normalise, read_image_set

from .conftest import write_digits


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_normalise_crops_converts_and_resizes() -> None:
    rgba = np.zeros((20, 40, 4), dtype=np.uint8)
    rgba[:, :, 3] = 0  # fully transparent: shown on white
    out, original = normalise(_png(rgba), 16, 1)
    assert out.shape == (16, 16, 1) and original == "40x20 RGBA"
    assert out.min() == 255  # transparency composited onto white, not black
    rgb, _ = normalise(_png(np.zeros((10, 10), dtype=np.uint8)), 12, 3)
    assert rgb.shape == (12, 12, 3)


def test_jsonl_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = _png(np.full((8, 8), 128, dtype=np.uint8))
    (tmp_path / "ok.png").write_bytes(good)
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "text.png").write_bytes(b"not an image at all")
    (tmp_path / "tiny.png").write_bytes(_png(np.zeros((4, 4), dtype=np.uint8)))
    rows = [
        {"image": "ok.png", "label": "cat"},
        "{broken",
        {"label": "cat"},
        {"image": "cut.png", "label": "cat"},
        {"image": "text.png", "label": "cat"},
        {"image": "missing.png", "label": "cat"},
        {"image": "ok.png", "label": ["a"]},
        {"image": "tiny.png", "text": "cat"},
    ]
    listing = tmp_path / "data.jsonl"
    listing.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    got = read_image_set(listing, 8, 1)
    assert [it.line for it in got.items] == [1]
    why = {(r.line, r.field): r.reason for r in got.rejected}
    assert set(why) == {(2, ""), (3, "image"), (4, "image"), (5, "image"), (6, "image"), (7, "label"), (8, "image")}
    assert "not valid JSON" in why[(2, "")]
    assert "truncated" in why[(4, "image")] or "corrupt" in why[(4, "image")]
    assert "not an image" in why[(5, "image")]
    assert "cannot read" in why[(6, "image")]
    assert "smaller than 8" in why[(8, "image")]
    assert all(r.file == str(listing) for r in got.rejected)


def test_phash_bands_find_every_pair_within_the_threshold() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (16, 16, 1), dtype=np.uint8)
    item = ImageItem("a.png", 0, "x", base, "", "")
    index = NearIndex()
    index.add(item, phash(base))
    brighter = np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8)  # a re-encode's worth of change
    hit = index.match(ImageItem("b.png", 0, "x", brighter, "", ""), phash(brighter))
    assert hit is not None and hit[0].file == "a.png" and hit[1] == "near"
    other = rng.integers(0, 255, (16, 16, 1), dtype=np.uint8)
    assert index.match(ImageItem("c.png", 0, "x", other, "", ""), phash(other)) is None
    assert index.match(ImageItem("d.png", 0, "x", base.copy(), "", ""), phash(base))[1] == "exact"  # type: ignore[index]


def test_audit_removes_duplicates_and_overlap_and_applies_the_licence(tmp_path: Path) -> None:
    train = write_digits(tmp_path / "train", {"5": 6, "6": 6})
    first = sorted((train / "5").iterdir())[0]
    (train / "5" / "copy.png").write_bytes(first.read_bytes())  # exact duplicate, another name
    jpeg = io.BytesIO()
    Image.open(first).convert("L").resize((32, 32)).save(jpeg, format="JPEG", quality=95)
    (train / "5" / "zz-resaved.jpg").write_bytes(jpeg.getvalue())  # the same digit, upscaled and re-encoded
    (train / "6" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    evald = write_digits(tmp_path / "eval", {"5": 4}, start=20)
    (evald / "5" / "leak.png").write_bytes(first.read_bytes())  # a training image in eval
    (tmp_path / "train.datacard.yaml").write_text("licence:\n  id: CC-BY-4.0\n")
    (tmp_path / "eval.datacard.yaml").write_text("licence:\n  id: CC-BY-4.0\n")
    policy = DataPolicy(max_quarantined_ratio=0.5)
    a = run_image_audit([train], [evald], tmp_path / "audit", policy, resolution=16, channels=1)
    r = a.report
    assert r["verdict"] == "pass", r["reasons"]
    assert r["duplicates"]["exact"] == 1 and r["duplicates"]["near"] == 1
    assert r["train_images"] == 12 and r["eval_images"] == 4
    assert r["removed_from_eval"] == 1 and r["contamination"][str(evald)]["contaminated"] == 1
    assert r["contamination"][str(evald)]["pairs"][0]["eval"].endswith("leak.png")
    q = [json.loads(line) for line in (tmp_path / "audit" / "quarantine.jsonl").read_text().splitlines()]
    reasons = {Path(x["file"]).name: x["reason"] for x in q}
    assert "duplicate of" in reasons["copy.png"] and "near duplicate" in reasons["zz-resaved.jpg"]
    assert "broken.png" in reasons
    assert r["classes"] == {"5": 6, "6": 6}
    strict = DataPolicy(allowed_licences=["MIT"], max_quarantined_ratio=0.5)
    b = run_image_audit([train], [evald], tmp_path / "audit2", strict, resolution=16, channels=1)
    assert b.report["verdict"] == "fail" and any("CC-BY-4.0" in x for x in b.report["reasons"])


def test_images_without_a_class_are_quarantined(tmp_path: Path) -> None:
    root = write_digits(tmp_path / "d", {"5": 2})
    (root / "loose.png").write_bytes((root / "5" / sorted(p.name for p in (root / "5").iterdir())[0]).read_bytes())
    a = run_image_audit([root], [], tmp_path / "audit", DataPolicy(max_quarantined_ratio=0.5), resolution=8,
                        channels=1)
    assert a.report["train_images"] == 2
    assert any(r.field == "folder" and "class subfolder" in r.reason for r in a.rejected)
