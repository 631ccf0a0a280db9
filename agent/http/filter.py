"""`?filter=` expressions: the go-bexpr subset Consul users write, evaluated over the returned JSON shape.

Grammar (keywords are case-sensitive, as in go-bexpr)::

    expr     := or
    or       := and ("or" and)*
    and      := unary ("and" unary)*
    unary    := "not" unary | "(" expr ")" | match
    match    := selector ("==" | "!=") value
              | value ["not"] "in" selector
              | selector ["not"] ("contains" | "matches") value
              | selector "is" ["not"] "empty"
    selector := name ("." name | "[" quoted "]")*
    value    := quoted ("..." or `...`) | bare word (letters, digits, _ - . / : @ +)

Selectors are checked against a schema of the shape being returned (so a typo is a 400, not an empty
list) and values are converted to the field's type. Through a list of objects (`Checks.Status`), a
positive match holds when any element matches and its negation when none does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------------- schemas

STR, INT, BOOL, STRLIST, STRMAP, ANYMAP = "string", "int", "bool", "[]string", "map[string]string", "map"


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list of objects with the given schema (e.g. a health entry's Checks)."""

    item: Mapping[str, Any]


Schema = Mapping[str, Any]  # field name -> type tag, nested Schema, or ListOf

NODE_SCHEMA: Schema = {
    "ID": STR, "Node": STR, "Address": STR, "Datacenter": STR, "TaggedAddresses": STRMAP, "Meta": STRMAP,
}
WEIGHTS_SCHEMA: Schema = {"Passing": INT, "Warning": INT}
SERVICE_SCHEMA: Schema = {
    "Kind": STR, "ID": STR, "Service": STR, "Tags": STRLIST, "Address": STR, "TaggedAddresses": ANYMAP,
    "Meta": STRMAP, "Port": INT, "Weights": WEIGHTS_SCHEMA, "EnableTagOverride": BOOL, "Proxy": ANYMAP,
    "Connect": ANYMAP,
}
CHECK_SCHEMA: Schema = {
    "Node": STR, "CheckID": STR, "Name": STR, "Status": STR, "Notes": STR, "Output": STR, "ServiceID": STR,
    "ServiceName": STR, "ServiceTags": STRLIST, "Type": STR, "Interval": STR, "Timeout": STR,
}
HEALTH_ENTRY_SCHEMA: Schema = {"Node": NODE_SCHEMA, "Service": SERVICE_SCHEMA, "Checks": ListOf(CHECK_SCHEMA)}
CATALOG_SERVICE_SCHEMA: Schema = {
    "ID": STR, "Node": STR, "Address": STR, "Datacenter": STR, "TaggedAddresses": STRMAP, "NodeMeta": STRMAP,
    "ServiceKind": STR, "ServiceID": STR, "ServiceName": STR, "ServiceTags": STRLIST, "ServiceAddress": STR,
    "ServiceTaggedAddresses": ANYMAP, "ServiceWeights": WEIGHTS_SCHEMA, "ServiceMeta": STRMAP,
    "ServicePort": INT, "ServiceEnableTagOverride": BOOL, "ServiceProxy": ANYMAP, "ServiceConnect": ANYMAP,
}
AGENT_SERVICE_SCHEMA: Schema = {**SERVICE_SCHEMA, "Datacenter": STR}


class FilterError(ValueError):
    """A filter that does not parse or does not fit the shape; the message is one line for a 400."""


# Bounds on untrusted filter text: the parser recurses per '(' and 'not', and evaluation per level of the
# tree, so both are capped well inside Python's recursion limit (go-bexpr users write a handful of terms).
MAX_FILTER_LENGTH = 4096
MAX_FILTER_DEPTH = 32


# ---------------------------------------------------------------------- tokens

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<op>==|!=|\(|\)|\[|\]|\.)
    | "(?P<dq>(?:[^"\\]|\\.)*)"
    | `(?P<bq>[^`]*)`
    | (?P<word>[A-Za-z0-9_\-/:@+]+)
    )""", re.VERBOSE)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "empty", "contains", "matches"})
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # "op", "str" (quoted), "word"
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    end = len(text.rstrip())
    while pos < end:
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"invalid filter: unexpected character {text[pos:].lstrip()[:1]!r} at "
                              f"offset {pos}")
        start = m.start(m.lastgroup) if m.lastgroup else pos
        if m.group("op") is not None:
            out.append(_Tok("op", m.group("op"), start))
        elif m.group("dq") is not None:
            out.append(_Tok("str", _ESCAPE.sub(r"\1", m.group("dq")), start))
        elif m.group("bq") is not None:
            out.append(_Tok("str", m.group("bq"), start))
        else:
            out.append(_Tok("word", m.group("word"), start))
        pos = m.end()
    return out


# ---------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class Match:
    """`selector <op> value`; op is one of ==, !=, in, not in, contains, not contains, matches,
    not matches, empty, not empty (value is None for the last two)."""

    op: str
    selector: tuple[str, ...]
    value: Any


@dataclass(frozen=True, slots=True)
class Not:
    """Logical negation."""

    expr: Expr


@dataclass(frozen=True, slots=True)
class BinOp:
    """`and` / `or`."""

    op: str
    left: Expr
    right: Expr


Expr = Match | Not | BinOp


class _Parser:
    def __init__(self, text: str, schema: Schema) -> None:
        if len(text) > MAX_FILTER_LENGTH:
            raise FilterError(f"invalid filter: longer than {MAX_FILTER_LENGTH} characters")
        self.toks = _tokenize(text)
        self.i = 0
        self.depth = 0
        self.schema = schema

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def is_kw(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == "word" and tok.text == word

    def is_op(self, op: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "op" and tok.text == op

    def next(self, what: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise FilterError(f"invalid filter: expected {what} at end of expression")
        self.i += 1
        return tok

    def fail(self, what: str) -> FilterError:
        tok = self.peek()
        if tok is None:
            return FilterError(f"invalid filter: expected {what} at end of expression")
        return FilterError(f"invalid filter: expected {what} at offset {tok.pos}, got {tok.text[:40]!r}")

    def parse(self) -> Expr:
        if not self.toks:
            raise FilterError("invalid filter: empty expression")
        expr = self.parse_or()
        if self.peek() is not None:
            raise self.fail("'and', 'or' or end of expression")
        return expr

    def parse_or(self) -> Expr:
        terms = [self.parse_and()]
        while self.is_kw("or"):
            self.i += 1
            terms.append(self.parse_and())
        return _balanced("or", terms)

    def parse_and(self) -> Expr:
        terms = [self.parse_unary()]
        while self.is_kw("and"):
            self.i += 1
            terms.append(self.parse_unary())
        return _balanced("and", terms)

    def parse_unary(self) -> Expr:
        if self.is_kw("not") or self.is_op("("):
            tok = self.peek()
            assert tok is not None
            self.depth += 1
            if self.depth > MAX_FILTER_DEPTH:
                raise FilterError(f"invalid filter: nested deeper than {MAX_FILTER_DEPTH} levels of '(' and "
                                  f"'not' at offset {tok.pos}")
            self.i += 1
            if tok.kind == "word":
                expr: Expr = Not(self.parse_unary())
            else:
                expr = self.parse_or()
                if not self.is_op(")"):
                    raise self.fail("')'")
                self.i += 1
            self.depth -= 1
            return expr
        return self.parse_match()

    def parse_match(self) -> Expr:
        first = self.peek()
        if first is None or first.kind == "op" or (first.kind == "word" and first.text in _KEYWORDS):
            raise self.fail("a selector or value")
        # `value in selector` / `value not in selector`: the value comes first.
        if self.is_kw("in", 1) or (self.is_kw("not", 1) and self.is_kw("in", 2)):
            self.i += 1
            negate = self.is_kw("not")
            self.i += 2 if negate else 1
            path, kind = self.parse_selector()
            if kind not in (STRLIST, STRMAP, ANYMAP, STR):
                raise FilterError(f"invalid filter: 'in' needs a list, map or string selector, "
                                  f"{'.'.join(path)} is {kind}")
            return Match("not in" if negate else "in", path, first.text)
        path, kind = self.parse_selector()
        tok = self.next("an operator")
        if tok.kind == "op" and tok.text in ("==", "!="):
            return Match(tok.text, path, self.parse_value(kind, path))
        if tok.kind == "word" and tok.text == "is":
            negate = self.is_kw("not")
            if negate:
                self.i += 1
            if not self.is_kw("empty"):
                raise self.fail("'empty'")
            self.i += 1
            return Match("not empty" if negate else "empty", path, None)
        negate = tok.kind == "word" and tok.text == "not"
        if negate:
            tok = self.next("'in', 'contains' or 'matches'")
        if tok.kind == "word" and tok.text in ("contains", "matches"):
            value = self.parse_raw_value()
            if tok.text == "matches":
                if kind != STR:
                    raise FilterError(f"invalid filter: 'matches' needs a string selector, "
                                      f"{'.'.join(path)} is {kind}")
                try:
                    compiled = re.compile(value)
                except re.error as exc:
                    raise FilterError(f"invalid filter: bad regular expression {value!r}: {exc}") from None
                return Match("not matches" if negate else "matches", path, compiled)
            if kind not in (STRLIST, STRMAP, ANYMAP, STR):
                raise FilterError(f"invalid filter: 'contains' needs a list, map or string selector, "
                                  f"{'.'.join(path)} is {kind}")
            return Match("not contains" if negate else "contains", path, value)
        self.i -= 1
        raise self.fail("'==', '!=', 'in', 'contains', 'matches' or 'is'")

    def parse_raw_value(self) -> str:
        tok = self.next("a value")
        if tok.kind == "op" or (tok.kind == "word" and tok.text in _KEYWORDS):
            self.i -= 1
            raise self.fail("a value")
        if tok.kind == "str":
            return tok.text
        # A bare value may contain dots (v1.2, 10.0.0.1): glue adjacent word and '.' tokens back together.
        text, end = tok.text, tok.pos + len(tok.text)
        while (nxt := self.peek()) is not None and nxt.pos == end and (
                nxt.kind == "word" or (nxt.kind == "op" and nxt.text == ".")):
            text += nxt.text
            end += len(nxt.text)
            self.i += 1
        return text

    def parse_value(self, kind: str, path: tuple[str, ...]) -> Any:
        text = self.parse_raw_value()
        if kind == INT:
            try:
                return int(text)
            except ValueError:
                raise FilterError(f"invalid filter: {'.'.join(path)} is a number, not {text[:40]!r}") from None
        if kind == BOOL:
            if text in ("true", "false"):
                return text == "true"
            raise FilterError(f"invalid filter: {'.'.join(path)} is true or false, not {text[:40]!r}")
        if kind in (STRLIST, ANYMAP, STRMAP) or isinstance(kind, dict):
            raise FilterError(f"invalid filter: cannot compare {'.'.join(path)} with '=='; use 'in' or "
                              f"'contains'")
        return text

    def parse_selector(self) -> tuple[tuple[str, ...], str]:
        """A selector path and its type tag, checked against the schema."""
        tok = self.next("a selector")
        if tok.kind != "word" or tok.text in _KEYWORDS:
            self.i -= 1
            raise self.fail("a selector")
        parts = [tok.text]
        while True:
            if self.is_op("."):
                self.i += 1
                part = self.next("a field name")
                if part.kind != "word":
                    self.i -= 1
                    raise self.fail("a field name")
                parts.append(part.text)
            elif self.is_op("["):
                self.i += 1
                part = self.next("a quoted key")
                if part.kind != "str" or not self.is_op("]"):
                    raise self.fail("a quoted key and ']'")
                self.i += 1
                parts.append(part.text)
            else:
                break
        return tuple(parts), _resolve(self.schema, parts)


def _balanced(op: str, terms: list[Expr]) -> Expr:
    """`a op b op c ...` as a balanced tree: the same left-to-right evaluation as a chain, but a long run of
    terms nests log2(n) deep instead of n (evaluation recurses per level)."""
    if len(terms) == 1:
        return terms[0]
    middle = len(terms) // 2
    return BinOp(op, _balanced(op, terms[:middle]), _balanced(op, terms[middle:]))


def _resolve(schema: Schema, parts: list[str]) -> str:
    """The type tag at a selector path, or FilterError when the path does not exist."""
    node: Any = schema
    for n, part in enumerate(parts):
        if isinstance(node, ListOf):
            node = node.item
        if isinstance(node, Mapping):
            if part not in node:
                raise FilterError(f"invalid filter: selector {'.'.join(parts[: n + 1])!r} is not valid")
            node = node[part]
        elif node in (STRMAP, ANYMAP) and n == len(parts) - 1:
            return STR  # a map key selects its value
        else:
            raise FilterError(f"invalid filter: selector {'.'.join(parts)!r} is not valid")
    if isinstance(node, ListOf):
        raise FilterError(f"invalid filter: selector {'.'.join(parts)!r} is a list of objects; "
                          f"select one of its fields")
    if isinstance(node, Mapping):
        raise FilterError(f"invalid filter: selector {'.'.join(parts)!r} is an object; select one of its fields")
    return str(node)


# ---------------------------------------------------------------------- evaluation

_MISSING = object()


def _values(data: Any, path: tuple[str, ...]) -> list[Any]:
    """Every value at path; fanning out over lists of objects (Checks.Status gives one per check)."""
    current = [data]
    for part in path:
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, list):
                for elem in item:
                    if isinstance(elem, dict):
                        nxt.append(elem.get(part, _MISSING))
            elif isinstance(item, dict):
                nxt.append(item.get(part, _MISSING))
        current = nxt
    return [v for v in current if v is not _MISSING]


def _positive(op: str, value: Any, wanted: Any) -> bool:
    if op == "==":
        return bool(value == wanted)
    if op in ("in", "contains"):
        if isinstance(value, (list, dict)):
            return wanted in value
        return isinstance(value, str) and wanted in value
    if op == "matches":
        return isinstance(value, str) and wanted.search(value) is not None
    if op == "empty":
        return value is None or value == "" or (isinstance(value, (list, dict)) and not value)
    return False


_NEGATIONS = {"!=": "==", "not in": "in", "not contains": "contains", "not matches": "matches",
              "not empty": "empty"}


def evaluate(expr: Expr, data: Any) -> bool:
    """Whether one returned object matches the expression."""
    if isinstance(expr, BinOp):
        if expr.op == "and":
            return evaluate(expr.left, data) and evaluate(expr.right, data)
        return evaluate(expr.left, data) or evaluate(expr.right, data)
    if isinstance(expr, Not):
        return not evaluate(expr.expr, data)
    values = _values(data, expr.selector)
    positive = _NEGATIONS.get(expr.op)
    if positive is None:
        if expr.op == "empty" and not values:
            return True
        return any(_positive(expr.op, v, expr.value) for v in values)
    if positive == "empty" and not values:
        return False
    return not any(_positive(positive, v, expr.value) for v in values)


def parse_filter(text: str, schema: Schema) -> Expr:
    """Parse and type-check a filter against a shape's schema; raises FilterError."""
    return _Parser(text, schema).parse()


def compile_filter(text: str, schema: Schema) -> Callable[[Any], bool]:
    """A predicate over returned objects for `?filter=text`."""
    expr = parse_filter(text, schema)
    return lambda data: evaluate(expr, data)
