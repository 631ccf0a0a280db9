"""Read HCL and JSON config text into dicts that remember where each object and key was written.

Every object (HCL block or object literal, JSON object) gets two extra keys: `__start_line__` (the line
of its opening) and `__lines__` (key → line of that key). Consumers strip keys starting with `__`.
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from typing import Any

START = "__start_line__"
LINES = "__lines__"
END = "__end_line__"  # only HCL blocks have it, which tells `x { }` ([{...}]) from `x = [{...}]`


class SyntaxProblem(Exception):
    """A file that does not parse: the reason and the line when the parser knows it."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


# ---------------------------------------------------------------------- JSON


_JSON_OBJECT: Any = json.decoder.JSONObject  # type: ignore[attr-defined]  # not in typeshed


class _LineDecoder(json.JSONDecoder):
    """A JSONDecoder that annotates objects with their start line and each key's line."""

    def __init__(self) -> None:
        super().__init__()
        # Spans of objects finished but not yet claimed by their parent; lets a parent skip its
        # children's text when it looks for its own keys.
        self._spans: list[tuple[int, int]] = []
        self.parse_object = self._object
        # The C scanner ignores parse_object; the pure-Python one (absent from typeshed) honours it.
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]

    def _object(self, s_and_end: tuple[str, int], *args: Any) -> tuple[dict[str, Any], int]:
        text, start = s_and_end
        mark = len(self._spans)
        obj, end = _JSON_OBJECT(s_and_end, *args)
        children = self._spans[mark:]
        del self._spans[mark:]
        self._spans.append((start - 1, end))
        lines: dict[str, int] = {}
        for key in obj:
            pos = _find_key(text, key, start, end, children)
            if pos is not None:
                lines[key] = line_at(text, pos)
        obj[START] = line_at(text, start - 1)
        obj[LINES] = lines
        return obj, end


def _find_key(text: str, key: str, start: int, end: int, skip: list[tuple[int, int]]) -> int | None:
    """Where `"key":` is written directly inside text[start:end] (not inside a nested object)."""
    pattern = re.compile(re.escape(json.dumps(key)) + r"\s*:")
    for match in pattern.finditer(text, start, end):
        if not any(a <= match.start() < b for a, b in skip):
            return match.start()
    return None


def load_json(text: str) -> Any:
    """Parse JSON text with line annotations; raises SyntaxProblem."""
    if not text.strip():
        return {}
    try:
        return _LineDecoder().decode(text)
    except json.JSONDecodeError as exc:
        raise SyntaxProblem(f"invalid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise SyntaxProblem("invalid JSON: nested too deeply", None) from None


# ---------------------------------------------------------------------- HCL


def load_hcl(text: str) -> Any:
    """Parse HCL2 text with line annotations; raises SyntaxProblem."""
    if not text.strip():
        return {}
    # hcl2 and lark (about 3 MB) are imported only when there is HCL to read: `-dev` and JSON-only
    # configurations never need them.
    from .hcl_syntax import load_hcl as parse

    return parse(text)
