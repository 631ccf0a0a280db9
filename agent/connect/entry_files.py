"""Config entry files (`meshagent config write FILE`, `config_entries.bootstrap`): HCL or JSON text to a
canonical entry, with errors naming the file, the line and the field. Reads only the file it is given.

HCL is HCL2 (python-hcl2): `Sources = [{ Name = "web" ... }]`, repeated blocks `sources { ... }` and heredocs
all work; Consul's HCL1 habit of blocks inside a list (`Match { HTTP { ... } }` within `Routes = [...]`) is
a syntax error in HCL2, and the message says to write `Match = { HTTP = { ... } }` there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config.connect_settings import line_of
from ..config.syntax import END, LINES, START, SyntaxProblem, load_hcl, load_json
from .entry_validate import EntryError, normalize_entry

MAX_FILE_BYTES = 1024 * 1024  # HCL is wordier than the 256 KiB of JSON an entry may be
_MARKERS = (START, LINES, END)


class EntryFileError(EntryError):
    """An entry file that cannot be read, parsed or validated; str() is "<file>:<line>: <problem>"."""

    def __init__(self, file: str, line: int | None, problem: str, *, kind: str = "", name: str = "",
                 field: str = "") -> None:
        super().__init__(kind, name, field, problem)
        self.file, self.line = file, line
        self.args = (f"{file}:{line}: {problem}" if line else f"{file}: {problem}",)

    def __str__(self) -> str:
        return str(self.args[0])


def load_entry_file(path: str | Path) -> dict[str, Any]:
    """Read, parse and normalize one entry file (HCL, or JSON by extension or a leading `{`)."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise EntryFileError(name, None, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise EntryFileError(name, None, f"is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryFileError(name, None, f"is not UTF-8 text (byte {exc.start})") from None
    json_like = name.endswith(".json") or (not name.endswith(".hcl") and text.lstrip().startswith("{"))
    return parse_entry_text(text, name, "json" if json_like else "hcl")


def parse_entry_text(text: str, source: str = "-", fmt: str = "hcl") -> dict[str, Any]:
    """Parse and normalize one entry from text (`fmt` "hcl" or "json"); `source` names it in errors."""
    if not text.strip():
        raise EntryFileError(source, None, "is empty: expected one config entry")
    try:
        tree = load_json(text) if fmt == "json" else load_hcl(text)
    except SyntaxProblem as exc:
        raise EntryFileError(source, exc.line, _hint(exc.reason)) from None
    try:
        return normalize_entry(strip_lines(tree))
    except EntryError as exc:
        line = line_of(tree, exc.field)
        raise EntryFileError(source, line, str(exc), kind=exc.kind, name=exc.name, field=exc.field) from None


def strip_lines(value: Any) -> Any:
    """The parsed data without the parser's line markers."""
    if isinstance(value, dict):
        return {k: strip_lines(v) for k, v in value.items() if k not in _MARKERS}
    if isinstance(value, list):
        return [strip_lines(v) for v in value]
    return value


def _hint(reason: str) -> str:
    if "unexpected '{'" in reason:
        return (f"{reason} (HCL2 has no blocks inside a list or map: write `Match = {{ HTTP = {{ ... }} }}`, "
                "not `Match { HTTP { ... } }`)")
    return reason
