"""Checkpoints are complete or absent: a failed write leaves the previous one intact and no debris."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tunelab.train import checkpoint as ckpt


def _write(tmp: Path) -> None:
    (tmp / "weights.bin").write_bytes(b"w" * 1000)
    (tmp / "state.json").write_text("{}")


def test_disk_full_mid_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    ckpt.save(tmp_path, 2, _write, keep_last=2)

    def full_disk(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        ckpt.save(tmp_path, 4, full_disk, keep_last=2)
    assert [s for s, _ in ckpt.listing(tmp_path)] == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["step-000002"]  # no temp directory left behind
    found = ckpt.latest_good(tmp_path)
    assert found is not None and found.step == 2 and not found.skipped


def test_damage_is_found_by_the_manifest(tmp_path: Path) -> None:
    ckpt.save(tmp_path, 1, _write, keep_last=3)
    ckpt.save(tmp_path, 2, _write, keep_last=3)
    ckpt.save(tmp_path, 3, _write, keep_last=3)
    (tmp_path / "step-000003" / "weights.bin").write_bytes(b"w" * 999 + b"x")  # same size, other bytes
    (tmp_path / "step-000002" / ckpt.MANIFEST).unlink()  # a write that never finished
    found = ckpt.latest_good(tmp_path)
    assert found is not None and found.step == 1
    assert [(p.name, why) for p, why in found.skipped] == [
        ("step-000003", "weights.bin does not match its sha256"),
        ("step-000002", "no MANIFEST (the write never finished)"),
    ]


def test_keep_last_prunes_old_checkpoints(tmp_path: Path) -> None:
    for s in range(1, 6):
        ckpt.save(tmp_path, s, _write, keep_last=2)
    assert [s for s, _ in ckpt.listing(tmp_path)] == [4, 5]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [(MemoryError(), "out of memory; lower batch.max_tokens"), (OSError(errno.ENOSPC, "full"), "disk full")],
)
def test_out_of_memory_or_disk_names_the_fix_and_the_intact_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, expected: str
) -> None:
    from tunelab.config import RunConfig
    from tunelab.errors import ResourceError
    from tunelab.progress import Reporter
    from tunelab.train import command
    from tunelab.train.distributed import Dist

    ckpt.save(tmp_path / "checkpoints", 6, _write, keep_last=2)

    def boom(*a: object, **k: object) -> None:
        raise exc

    monkeypatch.setattr(command, "train", boom)
    with pytest.raises(ResourceError) as e:
        command._train_or_explain(None, [], RunConfig(), Reporter(quiet=True), 0, tmp_path, False, Dist())
    assert expected in str(e.value)
    assert "step-000006" in str(e.value) and "--resume" in str(e.value)
