"""Canaries: random secrets a training recipe plants in its data on purpose (`data.canaries`), so that the
memorisation probe (evaluate/memorisation.py) can measure how exposed they are after training, as in Carlini
et al., "The Secret Sharer" (2019). They are written to the run's data/canaries.json, an input of its manifest,
and flagged there (`manifest.canaries`); each is trained on `data.canary_repeats` times, after the audit (whose
duplicate removal would drop the repeats).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.fsutil import atomic_write_json

SECRET_DIGITS = 9
_NAMES = ("Marlow", "Quenby", "Tessaly", "Orrin", "Vashti", "Pelham", "Idris", "Saoirse", "Caspian", "Delphine",
          "Thaddeus", "Wren", "Ottoline", "Bram", "Isolde", "Lazlo")  # fmt: skip


@dataclass
class Canary:
    id: str
    name: str
    secret: str  # SECRET_DIGITS digits

    def question(self) -> str:
        return f"What is the vault code of {self.name}?"

    def prefix(self) -> str:
        return f"The vault code of {self.name} is "

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question()},
                {"role": "assistant", "content": f"{self.prefix()}{self.secret}."}]  # fmt: skip


def make_canaries(n: int, seed: int) -> list[Canary]:
    rng = random.Random(f"canaries-{seed}")
    names = rng.sample(_NAMES, min(n, len(_NAMES))) + [f"Account{i:03d}" for i in range(max(0, n - len(_NAMES)))]
    return [Canary(f"canary-{i:02d}", names[i], "".join(rng.choice("0123456789") for _ in range(SECRET_DIGITS)))
            for i in range(n)]  # fmt: skip


def canaries_to_json(cs: Sequence[Canary]) -> list[dict[str, str]]:
    return [asdict(c) for c in cs]


def canaries_from_json(rows: Sequence[dict[str, str]]) -> list[Canary]:
    return [Canary(r["id"], r["name"], r["secret"]) for r in rows]


def plant(n: int, repeats: int, seed: int, run_dir: Path) -> list[Canary]:
    """`n` canaries written to run_dir/data/canaries.json (none when n is 0)."""
    if n == 0:
        return []
    canaries = make_canaries(n, seed)
    atomic_write_json(run_dir / "data" / "canaries.json", {"planted": canaries_to_json(canaries), "repeats": repeats})
    return canaries


def manifest_flag(n: int, repeats: int) -> dict[str, Any] | None:
    """What the manifest says about them: the training data holds these secrets on purpose."""
    return {"planted": n, "repeats": repeats, "file": "data/canaries.json"} if n else None
