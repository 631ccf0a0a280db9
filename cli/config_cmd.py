"""`meshagent config write|read|list|delete`: config entries through the HTTP API, with Consul's flags and messages.

`write` parses the HCL or JSON file here (syntax errors name the line) and sends the entry as written; the agent
validates it in full and a refusal (400) is shown with the field it names. Also the shared `api_call` helper of
the mesh commands (intention_cmd.py, connect_cmd.py): statuses and connection problems as one clear line.
"""

from __future__ import annotations

import re
import sys
from typing import Any
from urllib.parse import quote

import click
from meshagent.agent.config.connect_settings import line_of, strip_markers
from meshagent.agent.config.syntax import SyntaxProblem, load_hcl, load_json

from .http_client import AgentClient, api_call, error_text, fail, http_options, json_of
from .output import clean, format_option, print_json

MAX_FILE_BYTES = 1024 * 1024  # an entry file; the agent refuses bodies far smaller than this anyway


def cas_params(cas: bool, modify_index: int | None) -> dict[str, int]:
    """?cas=N for -cas -modify-index N; -modify-index alone is refused (it would be ignored)."""
    if modify_index is not None and not cas:
        fail("-modify-index is used only with -cas (Check-And-Set); add -cas or remove it")
    return {"cas": modify_index or 0} if cas else {}


def segment(text: str) -> str:
    """One URL path segment: `/`, `?`, `#` and `%` escaped, so that a name cannot reach another endpoint."""
    return quote(text, safe="")


def _need(value: str, flag: str) -> str:
    if not value:
        fail(f"Must specify the -{flag} parameter")
    return value


# ---------------------------------------------------------------------- reading an entry file


def read_entry(source: str) -> dict[str, Any]:
    """The parsed entry in FILE (or stdin for "-"), HCL or JSON, with the parser's line markers; exits on any
    problem."""
    name = "<stdin>" if source == "-" else source
    try:
        if source == "-":
            data = sys.stdin.buffer.read(MAX_FILE_BYTES + 1)
        else:
            with open(source, "rb") as fh:
                data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        fail(f"Failed to load data: {name}: {exc.strerror or exc}")
    if len(data) > MAX_FILE_BYTES:
        fail(f"Failed to load data: {name} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"Failed to load data: {name} is not UTF-8 text (byte {exc.start})")
    if not text.strip():
        fail(f"Failed to decode config entry input: {name} is empty")
    json_like = source.endswith(".json") or (not source.endswith(".hcl") and text.lstrip().startswith("{"))
    try:
        tree = load_json(text) if json_like else load_hcl(text)
    except SyntaxProblem as exc:
        where = f"{name}:{exc.line}" if exc.line else name
        hint = ""
        if "unexpected '{'" in exc.reason:  # Consul's HCL1 habit, a syntax error in HCL2
            hint = " (HCL2 has no blocks inside a list or map: write `Match = { HTTP = { ... } }`, not `Match { ... }`)"
        fail(f"Failed to decode config entry input: {where}: {exc.reason}{hint}")
    if not isinstance(tree, dict):
        fail(f"Failed to decode config entry input: {name}: the top level must be an object (one config entry)")
    return tree


def identity(entry: dict[str, Any], name: str) -> tuple[str, str]:
    """The entry's kind and name, written in any case (`Kind`, `kind`); exits when either is missing."""
    found: dict[str, Any] = {}
    for key, value in entry.items():
        folded = key.replace("_", "").lower()
        if folded in ("kind", "name"):
            found.setdefault(folded, value)
    if "kind" not in found:
        fail(f"Failed to decode config entry input: {name}: Payload does not contain a kind/Kind key at the top level")
    if not isinstance(found["kind"], str):
        fail(f"Failed to decode config entry input: {name}: Kind value in payload is not a string")
    if not isinstance(found.get("name"), str) or not found["name"]:
        fail(f"Failed to decode config entry input: {name}: Name is required (a non-empty string)")
    return found["kind"], found["name"]


# ---------------------------------------------------------------------- commands


@click.group()
def config() -> None:
    """Create, read, list and delete config entries (service-defaults, service-intentions, ...)."""


@config.command("write")
@click.option("-cas", "--cas", is_flag=True, help="Check-And-Set: write only if the entry's ModifyIndex is "
              "-modify-index (0: only if it does not exist).")
@click.option("-modify-index", "--modify-index", "modify_index", type=click.IntRange(min=0), default=None,
              help="The ModifyIndex for -cas.")
@http_options
@click.argument("source", metavar="FILE|-")
def write(source: str, cas: bool, modify_index: int | None, http_addr: str | None, token: str | None) -> None:
    """Create or update the config entry in FILE (HCL or JSON; - reads stdin)."""
    params = cas_params(cas, modify_index)
    tree = read_entry(source)
    entry = strip_markers(tree)
    file_name = "<stdin>" if source == "-" else source
    kind, name = identity(entry, file_name)
    what = f"Error writing config entry {kind}/{name}"
    resp = api_call(AgentClient(http_addr, token), "PUT", "/v1/config", what, params=params, body=entry,
                    ok=(200, 400))
    if resp.status_code == 400:
        # The agent names the field ("<Kind> <Name>: field <path>: <problem>"); the file says where it is.
        text = error_text(resp)
        found = re.search(r": field ([^:\s]+): ", text)
        line = line_of(tree, found.group(1)) if found else None
        where = f"\n{file_name}:{line}: field {found.group(1)}" if found and line else ""
        fail(f"{what}: Unexpected response code: 400 ({text}){where}")
    if json_of(resp, what) is not True:
        fail(f"Config entry not updated: {kind}/{name}")
    click.echo(f"Config entry written: {kind}/{name}")


@config.command("read")
@click.option("-kind", "--kind", default="", help="The entry's kind.")
@click.option("-name", "--name", default="", help="The entry's name.")
@format_option
@http_options
def read(kind: str, name: str, fmt: str, http_addr: str | None, token: str | None) -> None:
    """Print one config entry as JSON (with its CreateIndex and ModifyIndex, for -cas)."""
    del fmt  # an entry is JSON for people too (Consul prints it so): -format is accepted for scripts' sake
    kind, name = _need(kind, "kind"), _need(name, "name")
    what = f'Error reading config entry "{kind}" / "{name}"'
    resp = api_call(AgentClient(http_addr, token), "GET", f"/v1/config/{segment(kind)}/{segment(name)}", what)
    print_json(json_of(resp, what))


@config.command("list")
@click.option("-kind", "--kind", default="", help="The kind of entries to list.")
@click.option("-filter", "--filter", "filter_", default="", help="A filter expression over the entries.")
@format_option
@http_options
def list_(kind: str, filter_: str, fmt: str, http_addr: str | None, token: str | None) -> None:
    """Print the names of every config entry of a kind."""
    kind = _need(kind, "kind")
    what = f'Error listing config entries for kind "{kind}"'
    resp = api_call(AgentClient(http_addr, token), "GET", f"/v1/config/{segment(kind)}", what,
                    params={"filter": filter_} if filter_ else None)
    entries = json_of(resp, what)
    if not isinstance(entries, list):
        fail(f"{what}: the agent's answer is not a list")
    if fmt == "json":
        print_json(entries)
        return
    for entry in entries:
        if isinstance(entry, dict):
            click.echo(clean(entry.get("Name", "")))


@config.command("delete")
@click.option("-kind", "--kind", default="", help="The entry's kind.")
@click.option("-name", "--name", default="", help="The entry's name.")
@click.option("-cas", "--cas", is_flag=True, help="Check-And-Set: delete only if the entry's ModifyIndex is "
              "-modify-index.")
@click.option("-modify-index", "--modify-index", "modify_index", type=click.IntRange(min=0), default=None,
              help="The ModifyIndex for -cas.")
@http_options
def delete(kind: str, name: str, cas: bool, modify_index: int | None, http_addr: str | None,
           token: str | None) -> None:
    """Delete one config entry."""
    kind, name = _need(kind, "kind"), _need(name, "name")
    params = cas_params(cas, modify_index)
    what = f"Error deleting config entry {kind}/{name}"
    resp = api_call(AgentClient(http_addr, token), "DELETE", f"/v1/config/{segment(kind)}/{segment(name)}", what,
                    params=params)
    if cas and json_of(resp, what) is not True:
        fail(f"Config entry not deleted: {kind}/{name}")
    click.echo(f"Config entry deleted: {kind}/{name}")
