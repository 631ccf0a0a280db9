"""Configuration errors with file, line and dotted field, and a collector that gathers all of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class ConfigError:
    """One problem: the file (or `<api>`), the line when known, the dotted field and the reason."""

    path: str
    line: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class ConfigErrors(Exception):
    """Every error found, in file order; str() lists them one per line."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class Collector:
    """Gathers the errors and warnings of one source so that all of them are reported together."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []

    def error(self, field: str, reason: str, line: int | None = None) -> None:
        """Record an error at `field` (dotted), on `line` when known."""
        self.errors.append(ConfigError(self.path, line, field, reason))

    def warn(self, field: str, reason: str, line: int | None = None) -> None:
        """Record a warning, formatted like an error."""
        self.warnings.append(str(ConfigError(self.path, line, field, reason)))
