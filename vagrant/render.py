#!/usr/bin/env python3
"""Render an agent config template (vagrant/templates/*.hcl.tmpl) into HCL. Standard library only.

Shared by the Vagrant provisioning (vagrant/provision.sh, on the VM's own python3) and the namespace
test harness (tests/support/cluster_hosts.py), so that both run agents on the same configuration.

Templates use string.Template placeholders: `${name}`. A string value is escaped for use inside an HCL
string (the template writes the quotes: `node_name = "${node_name}"`); a list is written as a whole HCL
list (`retry_join = ${retry_join}` → `["198.18.0.11", "198.18.0.12"]`); an int is written as is. Every
placeholder must get a value and every value must be used, so a typo fails loudly instead of rendering
a config the agent would read differently.

    python3 render.py TEMPLATE [NAME=VALUE | NAME+=ITEM]... [-o OUT]

NAME=VALUE sets a string (an int when VALUE is all digits); NAME+=ITEM appends ITEM to a list (NAME+=
with nothing after it makes an empty list). The result goes to OUT (written atomically) or stdout.
"""

from __future__ import annotations

import json
import os
import re
import string
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

Value = str | int | Sequence[str]

TEMPLATES = Path(__file__).resolve().parent / "templates"


class RenderError(ValueError):
    """A template and its values do not fit: missing or unused placeholders, or a bad value."""


def hcl_string(text: str) -> str:
    """`text` escaped for the inside of an HCL double-quoted string (no interpolation, no newlines)."""
    if "\n" in text or "\r" in text:
        raise RenderError(f"value {text!r} contains a line break")
    # JSON escaping is valid HCL escaping. "${" and "%{" are left alone: meshagent's HCL reader keeps them
    # as they are (it does not interpolate), and would keep an escaped "$${" as two dollars.
    return json.dumps(text)[1:-1]


def hcl_value(value: Value) -> str:
    """One value as it goes into the template (see the module docstring)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return hcl_string(value)
    return "[" + ", ".join(f'"{hcl_string(str(item))}"' for item in value) + "]"


def placeholders(template: str) -> set[str]:
    """The placeholder names a template uses."""
    return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(template)
            if m.group("named") or m.group("braced")}


def render(template: str, values: Mapping[str, Value]) -> str:
    """Fill `template` (its text) with `values`; RenderError when a placeholder or a value is left over."""
    wanted = placeholders(template)
    missing = sorted(wanted - set(values))
    unused = sorted(set(values) - wanted)
    if missing or unused:
        parts = ([f"no value for {', '.join(missing)}"] if missing else []) + (
            [f"not in the template: {', '.join(unused)}"] if unused else [])
        raise RenderError("; ".join(parts))
    return string.Template(template).substitute({k: hcl_value(v) for k, v in values.items()})


def render_file(template: str | os.PathLike[str], values: Mapping[str, Value],
                out: str | os.PathLike[str] | None = None) -> str:
    """Render a template file (a path, or a bare name such as "server.hcl.tmpl" in vagrant/templates/);
    with `out`, also write the result there atomically. Returns the rendered text."""
    path = Path(template)
    if not path.exists() and len(path.parts) == 1:
        path = TEMPLATES / path
    text = render(path.read_text(encoding="utf-8"), values)
    if out is not None:
        dest = Path(out)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return text


_ARG = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>\+?=)(?P<value>.*)$", re.S)


def parse_args(args: Sequence[str]) -> dict[str, Value]:
    """NAME=VALUE and NAME+=ITEM arguments into values."""
    values: dict[str, Value] = {}
    for arg in args:
        m = _ARG.match(arg)
        if m is None:
            raise RenderError(f"bad argument {arg!r}: expected NAME=VALUE or NAME+=ITEM")
        name, op, value = m["name"], m["op"], m["value"]
        if op == "+=":
            current = values.setdefault(name, [])
            if not isinstance(current, list):
                raise RenderError(f"{name} is given both as a value and as a list")
            if value:
                current.append(value)
        elif name in values:
            raise RenderError(f"{name} is given twice")
        else:
            values[name] = int(value) if value.isdigit() else value
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if args else 2
    out = None
    if "-o" in args:
        i = args.index("-o")
        if i + 1 >= len(args):
            print("render.py: -o needs a file name", file=sys.stderr)
            return 2
        out = args[i + 1]
        del args[i:i + 2]
    try:
        text = render_file(args[0], parse_args(args[1:]), out)
    except (OSError, RenderError) as exc:
        print(f"render.py: {args[0]}: {exc}", file=sys.stderr)
        return 1
    if out is None:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
