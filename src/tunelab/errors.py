"""The few project exceptions. The CLI turns them into one-line messages and exit codes in one place."""

from __future__ import annotations

from pathlib import Path


class TunelabError(Exception):
    """Base class. `exit_code` follows DESIGN.md: 1 a gate said no, 2 bad input or usage."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file + (f":{self.line}" if self.line is not None else "")
        if self.field:
            where = f"{where} [{self.field}]" if where else f"[{self.field}]"
        return f"{where}: {self.message}" if where else self.message


class DataError(TunelabError):
    """Input data cannot be read or is not in the expected format."""


class ConfigError(TunelabError):
    """A configuration value or command-line option is wrong."""


class ModelError(TunelabError):
    """A model cannot be found or loaded."""


class GateFailed(TunelabError):
    """A policy or regression gate said no."""

    exit_code = 1


class ResourceError(TunelabError):
    """The machine ran out of something (memory, disk) the run needs; what was saved before is intact."""
