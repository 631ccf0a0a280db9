"""A client agent's code (agent/client/) takes the :8300 framing, RPC client and errors from agent/rpc/, never
from agent/server/ (issue 12): the server's internals may change without touching the client."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def server_imports(folder: Path) -> list[str]:
    """`file:line module` for every import of agent/server from the files of `folder` (an agent/ subfolder)."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                # Relative to agent/<folder>/: one dot is the folder itself, two dots agent/.
                base = "meshagent.agent." if node.level == 2 else "meshagent.agent.client." if node.level == 1 else ""
                modules = [base + (node.module or "")] + [f"{base}{node.module or ''}.{a.name}".replace("..", ".")
                                                          for a in node.names]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            hits = [m for m in modules if m == "meshagent.agent.server" or m.startswith("meshagent.agent.server.")]
            if hits:
                found.append(f"{path.name}:{node.lineno} {hits[0]}")
    return found


def test_agent_client_imports_nothing_from_agent_server() -> None:
    assert server_imports(REPO / "agent" / "client") == []


def test_the_check_catches_a_planted_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from ..server.feed import HEARTBEAT_INTERVAL\n")
    (tmp_path / "b.py").write_text("from .. import server\n")
    (tmp_path / "c.py").write_text("import meshagent.agent.server.listener\n")
    (tmp_path / "d.py").write_text("from ..rpc.framing import pack_frame\nfrom .servers import ServerPool\n")
    assert server_imports(tmp_path) == ["a.py:1 meshagent.agent.server.feed", "b.py:1 meshagent.agent.server",
                                        "c.py:1 meshagent.agent.server.listener"]
