"""A linear-time reader for the common shapes of ACL Rules text, giving the same tree python-hcl2 gives.

`scan_hcl` reads the subset of HCL2 Consul's rule language uses: `name = "string"` attributes and
`name "label" … { body }` blocks, with `#`, `//` and `/* */` comments, exactly where python-hcl2's grammar
(hcl2.lark) allows them. `scan_json` reads JSON with the C decoder. Both return the tree python-hcl2 /
`load_json` would give minus the line annotations (`__start_line__`, `__lines__`, `__end_line__`), or None
for anything outside the subset or not well formed: the caller then takes the python-hcl2 path, whose
error messages (with lines) stay the only ones. Nothing here raises on hostile input.
"""

from __future__ import annotations

import json
import re
from typing import Any

# python-hcl2's NAME; `if`, `in`, `for`, `for_each` are keywords there (left to python-hcl2).
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_-]*")
_KEYWORDS = frozenset({"if", "in", "for", "for_each"})
# A quoted string without escapes, templates or newlines (python-hcl2 rewrites those; left to it).
_STRING = re.compile(r'"([^"\\\n]*)"')
_BLANKS = re.compile(r"[ \t]*")
# hcl2.lark's new_line_or_comment: one or more of `\n`, `#…\n`, `//…\n`, `/* … */`, spaces between.
_NL_OR_COMMENT = re.compile(r"(?:[ \t]*(?:\n|#[^\n]*\n|//[^\n]*\n|/\*[\s\S]*?\*/))+[ \t]*")
# What may follow an attribute's value or a block's `}` on the same line: a newline or comment, the end
# of the enclosing body, or the next item (the grammar needs no separator between items).
_AFTER_ITEM = re.compile(r"[ \t]*(?=[\n#}a-zA-Z_]|//|/\*|$)")

MAX_DEPTH = 8  # rule blocks nest one level; deeper text is left to python-hcl2 (which refuses it anyway)


class _Outside(Exception):
    """The text leaves the subset this reader handles (or is not well formed)."""


def scan_hcl(text: str) -> dict[str, Any] | None:
    """The python-hcl2 tree of `text` (without line annotations), or None: use python-hcl2."""
    src = text + "\n"  # as syntax.load_hcl: the grammar wants a final newline (a `#` comment ends there)
    try:
        body, pos = _body(src, 0, 0)
    except (_Outside, IndexError):
        return None
    return body if pos == len(src) else None


def _body(src: str, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    """One body from `pos`: at depth 0 up to the end of the text, else up to and past its `}`."""
    result: dict[str, Any] = {}
    attributes: set[str] = set()
    end = len(src)
    while True:
        m = _NL_OR_COMMENT.match(src, pos)
        pos = m.end() if m else _BLANKS.match(src, pos).end()  # type: ignore[union-attr]  # [ \t]* always matches
        if pos == end:
            if depth:
                raise _Outside  # a block not closed
            return result, pos
        if src[pos] == "}":
            if not depth:
                raise _Outside
            return result, pos + 1
        key, pos, value, is_attribute = _item(src, pos, depth)
        # python-hcl2's body(): an attribute may be defined once and never share a name with a block.
        if key in result and (is_attribute or key in attributes):
            raise _Outside
        if is_attribute:
            result[key] = value
            attributes.add(key)
        else:
            result.setdefault(key, []).append(value)
        after = _AFTER_ITEM.match(src, pos)
        if after is None:
            raise _Outside
        pos = after.end()


def _item(src: str, pos: int, depth: int) -> tuple[str, int, Any, bool]:
    """One attribute (`key = "value"`) or block (`key "label"… { body }`): (key, end, value, is attribute)."""
    m = _NAME.match(src, pos)
    if m is None:
        raise _Outside
    key = m.group()
    if key in _KEYWORDS or key.startswith("__"):
        raise _Outside  # keywords parse differently; `__…` names collide with the line annotations
    pos = _BLANKS.match(src, m.end()).end()  # type: ignore[union-attr]
    if src[pos] == "=":
        if src[pos + 1] in "=>":
            raise _Outside  # `==` or `=>`: an expression, not an attribute
        pos = _BLANKS.match(src, pos + 1).end()  # type: ignore[union-attr]
        value, pos = _string(src, pos)
        return key, pos, value, True
    labels: list[str] = []
    while src[pos] == '"':
        label, pos = _string(src, pos)
        if label.startswith("__"):
            raise _Outside
        labels.append(label)
        pos = _BLANKS.match(src, pos).end()  # type: ignore[union-attr]
    nl = _NL_OR_COMMENT.match(src, pos)
    if nl is not None:
        pos = nl.end()
    if src[pos] != "{" or depth >= MAX_DEPTH:
        raise _Outside
    block, pos = _body(src, pos + 1, depth + 1)
    for label in reversed(labels):
        block = {label: block}
    return key, pos, block, False


def _string(src: str, pos: int) -> tuple[str, int]:
    m = _STRING.match(src, pos)
    if m is None or "${" in m.group(1):
        raise _Outside  # not a plain string (templates `${…}`/`$${…}` are rewritten by python-hcl2)
    return m.group(1), m.end()


# ---------------------------------------------------------------------- JSON


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # load_json writes its line annotations over keys named like them: such text takes that path.
    for key, _ in pairs:
        if key.startswith("__"):
            raise _Outside
    return dict(pairs)  # what the decoder does without a hook: the last value wins, the first place stays


def scan_json(text: str) -> Any | None:
    """The value `load_json` gives for `text` (without line annotations), or None: use `load_json`."""
    try:
        return json.loads(text, object_pairs_hook=_pairs)
    except (_Outside, ValueError, RecursionError):
        return None
