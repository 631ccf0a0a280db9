"""The CLI's start-up: what `meshagent --help` and `meshagent version` import (not how long they take: that is
bench/cli/run.py), the command list that --help prints without importing commands, the agent address from the
environment, the build revision, and the agent's start-up frictions (banner first, a port clash named)."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from meshagent.agent.lifecycle import LogGate, bind_error_text, listen_failure
from meshagent.build_info import _git_commit, revision
from meshagent.cli import main as cli_main
from meshagent.cli.http_client import DEFAULT_ADDR, agent_address

from tests.support.agents import MESHAGENT, scratch_dir
from tests.support.ports import free_host_in

HEAVY = ("trio", "httpx", "ssl", "rich", "h11", "dns", "meshagent.agent.config.loader")

# Runs the CLI in a fresh interpreter and reports the modules it loaded (a real ssl import, not a deferred
# placeholder, counts: the placeholder's class is checked).
_PROBE = """
import json, sys
from meshagent.cli.main import main
sys.argv = ["meshagent", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
loaded = [n for n, m in sys.modules.items() if type(m).__name__ != "DeferredModule"]
sys.stderr.write("\\nMODULES " + json.dumps(loaded) + "\\n")
"""


def _modules_loaded_by(*args: str) -> tuple[str, set[str]]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=60, check=False)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES "))
    return proc.stdout, set(json.loads(line[len("MODULES "):]))


@pytest.mark.parametrize("args", [("--help",), ("-h",), ("version",), ("version", "-format", "json")])
def test_help_and_version_import_no_network_stack(args: tuple[str, ...]) -> None:
    out, modules = _modules_loaded_by(*args)
    assert out.strip(), "the command printed nothing"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
    assert not heavy, f"`meshagent {' '.join(args)}` imported {heavy}"


def test_help_lists_every_command_without_importing_it() -> None:
    out, modules = _modules_loaded_by("--help")
    for name in cli_main.COMMANDS:
        assert f"  {name} " in out
    assert not any(m.startswith("meshagent.cli.") and m.endswith("_cmd") for m in modules)


def test_summary_matches_each_commands_own_help() -> None:
    group = cli_main.cli
    ctx = click.Context(group, info_name="meshagent")
    for name in cli_main.COMMANDS:
        command = group.get_command(ctx, name)
        assert command is not None
        if name in cli_main.SUMMARY:
            assert cli_main.SUMMARY[name] == command.get_short_help_str(limit=1000), name
    # the listing equals click's own (which imports every command to read its help)
    ours, clicks = ctx.make_formatter(), ctx.make_formatter()
    group.format_commands(ctx, ours)
    click.Group.format_commands(group, ctx, clicks)
    assert ours.getvalue() == clicks.getvalue()


def test_agent_address_from_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_HTTP_ADDR", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_ADDR", raising=False)
    assert agent_address(None) == DEFAULT_ADDR
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "127.0.56.9:8500")
    assert agent_address(None) == "http://127.0.56.9:8500"
    monkeypatch.setenv("MESH_HTTP_ADDR", "http://127.0.56.8:8500/")
    assert agent_address(None) == "http://127.0.56.8:8500"  # ours wins over Consul's name
    assert agent_address("https://127.0.56.7:8501") == "https://127.0.56.7:8501"  # the flag wins over both


def test_revision_is_never_empty_and_is_the_checkout(tmp_path: Path) -> None:
    assert revision()
    fake = tmp_path / ".git"
    (fake / "refs" / "heads").mkdir(parents=True)
    (fake / "HEAD").write_text("ref: refs/heads/main\n")
    assert _git_commit(str(fake)) == ""  # an unborn branch
    (fake / "packed-refs").write_text("# pack-refs\n" + "ab" * 20 + " refs/heads/main\n")
    assert _git_commit(str(fake)) == "ab" * 20
    (fake / "refs" / "heads" / "main").write_text("cd" * 20 + "\n")
    assert _git_commit(str(fake)) == "cd" * 20
    (fake / "HEAD").write_text("ref: refs/../../etc/passwd\n")  # a hostile ref never leaves .git
    assert _git_commit(str(fake)) == ""
    (fake / "HEAD").write_text("ef" * 20)  # detached
    assert _git_commit(str(fake)) == "ef" * 20


def test_log_gate_holds_lines_until_opened() -> None:
    logger = logging.getLogger("meshagent.test_gate")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(logging.INFO)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        gate = LogGate("meshagent.test_gate")
        logger.info("first")
        logger.debug("below the handler's level")
        assert out.getvalue() == ""
        gate.open()
        logger.info("second")
        gate.open()  # idempotent
        assert out.getvalue().split() == ["first", "second"]
        assert logger.handlers == [handler]
    finally:
        logger.handlers[:] = []


def test_bind_error_names_the_address() -> None:
    host = free_host_in("127.0.56", 20, 40)
    with socket.socket() as holder:
        holder.bind((host, 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            with socket.socket() as second:
                second.bind((host, port))
        except OSError as exc:
            error = exc
        found = listen_failure(BaseExceptionGroup("start", [ExceptionGroup("inner", [error])]))
        assert found is error
        assert bind_error_text("HTTP server", [host], port, error) == \
            f"HTTP server: bind {host}:{port}: address already in use"


def test_agent_port_clash_says_which_address() -> None:
    host = free_host_in("127.0.56", 41, 60)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((host, 8500))
        holder.listen()
        proc = subprocess.run([MESHAGENT, "agent", "-dev", "-client", host, "-bind", host, "-node", "clash"],
                              capture_output=True, text=True, timeout=60, cwd=scratch_dir(), check=False,
                              env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 1
    assert f"==> Error starting agent: HTTP server: bind {host}:8500: address already in use" in proc.stderr
