"""HCL2 config text read with line annotations (see syntax.py); imported only when there is HCL to parse."""

from __future__ import annotations

import re
from typing import Any

from hcl2.parser import parser as hcl_parser
from hcl2.transformer import Attribute, DictTransformer
from lark import Token
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.tree import Meta
from lark.visitors import v_args

from .syntax import LINES, START, SyntaxProblem, line_at


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
    """Parse HCL2 text (not blank) with line annotations; raises SyntaxProblem."""
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
    return line_at(text, hits[1]) if len(hits) > 1 else None
