"""Config files for loader tests: write one, and read back what `meshagent validate` would say about some."""

from __future__ import annotations

from pathlib import Path

from meshagent.agent.config.loader import validate_paths


def write(path: Path, text: str) -> str:
    """Write `text` to `path`; its name as a string (what the loader takes)."""
    path.write_text(text)
    return str(path)


def errors_of(*paths: str) -> list[tuple[str, int | None, str, str]]:
    """Every error validating `paths` gives, as (path, line, field, reason)."""
    errors, _ = validate_paths(list(paths))
    return [(e.path, e.line, e.field, e.reason) for e in errors]
