"""Progress for people (Rich bars with loss, tokens/s, ETA) and for machines (`events.jsonl`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Update = Callable[..., None]


class Reporter:
    """One object the stages talk to. Stages never print directly."""

    def __init__(self, events: Path | None = None, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._events = open(events, "a", encoding="utf-8") if events else None  # noqa: SIM115

    def event(self, kind: str, **data: Any) -> None:
        if self._events:
            self._events.write(json.dumps({"t": round(time.time(), 3), "event": kind, **data}, default=str) + "\n")
            self._events.flush()

    def info(self, message: str, **data: Any) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False)
        self.event("info", message=message, **data)

    def stage(self, name: str) -> None:
        if not self.quiet:
            self.console.rule(f"[bold]{name}", align="left")
        self.event("stage", name=name)

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner for a step with no measurable progress (e.g. a one-time model conversion)."""
        self.event("status", message=message)
        if self.quiet:
            yield
            return
        with self.console.status(message):
            yield

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[Update]:
        """Yields `update(advance=1, **stats)`; stats show beside the bar (loss=…, tok_s=…)."""
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        ]
        bar = Progress(*columns, console=self.console, disable=self.quiet, transient=False)
        task = bar.add_task(description, total=total, stats="")

        def update(advance: int = 1, **stats: Any) -> None:
            bar.update(task, advance=advance, stats=_fmt(stats))

        with bar:
            yield update

    def close(self) -> None:
        if self._events:
            self._events.close()
            self._events = None


def _fmt(stats: dict[str, Any]) -> str:
    parts = []
    for k, v in stats.items():
        if isinstance(v, float):
            v = f"{v:.3g}" if k != "lr" else f"{v:.1e}"
        parts.append(f"{k.replace('_', '/')} {v}")
    return " · ".join(parts)
