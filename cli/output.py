"""What the CLI prints: the shared `-format table|json` option, JSON, and Consul-style aligned columns.

No rich and no httpx here: `meshagent version` uses it and must start fast. Text from the agent is hostile: table
cells lose control characters (an escape sequence in a node name must not drive the terminal).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

FORMATS = ("table", "json")
# Consul's -format takes "pretty" on some commands (version, acl) and "table" on others; both mean "for people".
_ALIASES = {"pretty": "table", "table": "table", "json": "json"}

F = TypeVar("F", bound=Callable[..., Any])


def _normalise(ctx: click.Context, param: click.Parameter, value: str) -> str:
    found = _ALIASES.get(value.strip().lower())
    if found is None:
        raise click.BadParameter(f"{value!r} is not one of table (or pretty), json", ctx=ctx, param=param)
    return found


def format_option(func: F) -> F:
    """Add Consul's -format (table|pretty|json; default table) to a command: it gets `fmt`, "table" or "json"."""
    return click.option("-format", "--format", "fmt", default="table", callback=_normalise, metavar="table|json",
                        help="Output format: table (or pretty) for people, json for programs.")(func)


def print_json(value: Any) -> None:
    """`value` as indented JSON (four spaces, as Consul's CLI prints it), keys in the agent's order."""
    click.echo(json.dumps(value, indent=4, ensure_ascii=False))


def clean(value: object) -> str:
    """A value as one line of printable text: control characters (escapes, newlines) become spaces."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else " " for ch in text)


def table_lines(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Whitespace-aligned columns (two spaces apart, no borders, no trailing blanks), as Consul's columnize."""
    cells = [[clean(c) for c in headers]] + [[clean(c) for c in row] for row in rows]
    count = max(len(r) for r in cells)
    widths = [max((len(r[i]) for r in cells if i < len(r)), default=0) for i in range(count)]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print `rows` under `headers` as aligned columns."""
    click.echo("\n".join(table_lines(headers, rows)))


def print_pairs(pairs: Sequence[tuple[str, object]]) -> None:
    """`Key:  value` lines with the values aligned (Consul's `kv get -detailed`, `intention get`)."""
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        click.echo(f"{key:<{width}}  {clean(value)}".rstrip())
