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

from hcl2.parser import parser as hcl_parser
from hcl2.transformer import Attribute, DictTransformer
from lark import Token
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.tree import Meta
from lark.visitors import v_args

START = "__start_line__"
LINES = "__lines__"
END = "__end_line__"  # only HCL blocks have it, which tells `x { }` ([{...}]) from `x = [{...}]`


class SyntaxProblem(Exception):
    """A file that does not parse: the reason and the line when the parser knows it."""

    def __init__(self, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


def _line_at(text: str, pos: int) -> int:
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
                lines[key] = _line_at(text, pos)
        obj[START] = _line_at(text, start - 1)
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


class _LinedAttribute(Attribute):
    """hcl2's Attribute plus the line it was written on."""

    line: int


class _LineTransformer(DictTransformer):
    """hcl2's DictTransformer, also annotating object literals and every key with its line."""

    def __init__(self) -> None:
        super().__init__(with_meta=True)

    @v_args(meta=True)
    def attribute(self, meta: Meta, args: list[Any]) -> Attribute:
        plain = super().attribute(args)
        lined = _LinedAttribute(plain.key, plain.value)
        lined.line = meta.line
        return lined

    @v_args(meta=True)
    def object_elem(self, meta: Meta, args: list[Any]) -> dict[str, Any]:
        elem: dict[str, Any] = super().object_elem(args)
        elem[LINES] = {key: meta.line for key in elem}
        return elem

    @v_args(meta=True)
    def object(self, meta: Meta, args: list[Any]) -> dict[str, Any]:
        lines: dict[str, int] = {}
        result: dict[str, Any] = {}
        for arg in self.strip_new_line_tokens(args):
            if isinstance(arg, Token):  # the optional trailing comma
                continue
            lines.update(arg.pop(LINES, {}))
            result.update(arg)
        result[START] = meta.line
        result[LINES] = lines
        return result

    def body(self, args: list[Any]) -> dict[str, Any]:
        lines: dict[str, int] = {}
        for arg in self.strip_new_line_tokens(args):
            if isinstance(arg, _LinedAttribute):
                lines.setdefault(arg.key, arg.line)
            elif isinstance(arg, dict):
                for key, value in arg.items():
                    if isinstance(value, dict) and isinstance(value.get(START), int):
                        lines.setdefault(str(key), value[START])
        result: dict[str, Any] = super().body(args)
        result[LINES] = lines
        return result


def load_hcl(text: str) -> Any:
    """Parse HCL2 text with line annotations; raises SyntaxProblem."""
    if not text.strip():
        return {}
    try:
        tree = hcl_parser().parse(text + "\n")  # hcl2's own workaround: the grammar needs a final newline
        return _LineTransformer().transform(tree)
    except UnexpectedInput as exc:
        raise SyntaxProblem(f"invalid HCL: {_describe(exc)}", exc.line if exc.line > 0 else None) from None
    except (LarkError, RuntimeError, ValueError) as exc:
        # hcl2 raises RuntimeError("x already defined") for a repeated attribute, wrapped by lark.
        raise SyntaxProblem(f"invalid HCL: {_first_line(exc)}", _repeated_line(text, exc)) from None
    except RecursionError:
        raise SyntaxProblem("invalid HCL: nested too deeply", None) from None


def _describe(exc: UnexpectedInput) -> str:
    """A one-line account of a lark error, with a hint for Consul's HCL1-only quoted block keys."""
    column = f" at column {exc.column}" if exc.column > 0 else ""
    if isinstance(exc, UnexpectedToken):
        reason = f"unexpected {_token_text(exc.token)}{column}"
        if exc.token.type == "DBLQUOTE" and "NAME" in exc.expected:
            reason += ' (quoted keys need a map: `name = { "key" = value }`)'
        return reason
    if isinstance(exc, UnexpectedCharacters):
        return f"unexpected character {exc.char!r}{column}"
    if isinstance(exc, UnexpectedEOF):
        return "unexpected end of file (a block or string is not closed)"
    return _first_line(exc)


def _token_text(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    text = str(token.value).strip()
    return repr(text.splitlines()[0]) if text else "end of line"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _repeated_line(text: str, exc: BaseException) -> int | None:
    """The second line defining `x` for hcl2's 'x already defined' (best effort)."""
    match = re.search(r"(\S+) already defined", str(exc))
    if match is None:
        return None
    hits = [m.start() for m in re.finditer(rf"(?m)^\s*\"?{re.escape(match.group(1))}\"?\s*=", text)]
    return _line_at(text, hits[1]) if len(hits) > 1 else None
