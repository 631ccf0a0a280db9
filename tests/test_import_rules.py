"""The layering rules of docs/ARCHITECTURE ("what each folder may import"), checked statically with `ast`.

Run alone with `make check-imports` (or `.venv/bin/pytest -q tests/test_import_rules.py`). Every import
statement counts, also ones inside functions or `if TYPE_CHECKING:` (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Repo folder -> installed package name (pyproject's package-dir).
PACKAGES = {"agent": "meshagent.agent", "gossip": "meshagent.gossip", "raft": "meshagent.raft",
            "proxy": "meshagent.proxy", "cli": "meshagent.cli", "meshagent_root": "meshagent"}
# The I/O edges of the cores: the only core-folder modules allowed a clock, sockets or trio.
IO_EDGES = {"gossip/runtime.py", "raft/storage.py"}
CORE_FORBIDDEN = ("trio", "socket", "time", "threading", "asyncio")
# What cli/ may take from the agent: config loading and validation ("agent's config/validation only"), and
# the process's one entry point, which `meshagent agent` calls. File formats the CLI reads or writes too
# (snapshot archives, certificates, atomic writes) are leaf modules of the top package, not agent internals.
CLI_ALLOWED = ("meshagent.agent.config", "meshagent.agent.entry")


@dataclass(frozen=True)
class Import:
    """One import statement's module (absolute, as installed), the names it takes, and where it is."""

    path: str  # repo-relative, e.g. "gossip/serf.py"
    line: int
    module: str
    names: tuple[str, ...] = ()  # `from module import a, b`: a and b may be modules too

    def first_under(self, prefixes: tuple[str, ...]) -> str | None:
        """The module this import takes from under one of `prefixes` (the most general spelling), or None."""
        for target in (self.module, *(f"{self.module}.{n}" for n in self.names)):
            if any(_under(target, p) for p in prefixes):
                return target
        return None


def _module_name(rel: Path) -> str:
    """The installed dotted name of a repo file (gossip/serf.py -> meshagent.gossip.serf)."""
    parts = list(rel.with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = REPO) -> Iterator[Import]:
    """Every import statement of the file, relative imports resolved against its installed name."""
    rel = path.relative_to(root)
    package = _module_name(rel).split(".")
    if rel.name != "__init__.py":
        package.pop()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(str(rel), node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield Import(str(rel), node.lineno, module, tuple(a.name for a in node.names if a.name != "*"))


def _files(folder: str, root: Path = REPO) -> list[Path]:
    return sorted((root / folder).rglob("*.py"))


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def core_violations(folders: tuple[str, ...] = ("gossip", "raft"), root: Path = REPO) -> list[str]:
    """Core modules importing a clock, sockets, threads, an event loop, or the agent."""
    out = []
    for folder in folders:
        for path in _files(folder, root):
            rel = str(path.relative_to(root))
            for imp in imports_of(path, root):
                if agent := imp.first_under(("meshagent.agent",)):
                    out.append(f"{rel}:{imp.line} imports {agent} (gossip/ and raft/ never import agent/)")
                elif rel not in IO_EDGES and (io := imp.first_under(CORE_FORBIDDEN)):
                    out.append(f"{rel}:{imp.line} imports {io} (a core does no I/O: time and I/O are inputs)")
    return sorted(set(out))


def proxy_violations(root: Path = REPO) -> list[str]:
    """proxy/ importing the agent (the agent feeds it typed config)."""
    return sorted({f"{i.path}:{i.line} imports {m}" for p in _files("proxy", root) for i in imports_of(p, root)
                   if (m := i.first_under(("meshagent.agent",)))})


def cli_agent_imports(root: Path = REPO) -> set[tuple[str, str]]:
    """(file, module) of every cli/ import of agent internals other than config validation."""
    found = set()
    for path in _files("cli", root):
        for imp in imports_of(path, root):
            module = imp.first_under(("meshagent.agent",))
            if module and not any(_under(module, a) for a in CLI_ALLOWED):
                found.add((imp.path, module))
    return found


def test_cores_import_no_clock_socket_thread_or_agent() -> None:
    assert core_violations() == []


def test_proxy_never_imports_the_agent() -> None:
    assert proxy_violations() == []


def test_cli_imports_only_config_validation_from_the_agent() -> None:
    found = sorted(cli_agent_imports())
    assert found == [], f"cli/ may import only {CLI_ALLOWED} from the agent; it imports: {found}"


# ---------------------------------------------------------------------- the checker itself can fail


@pytest.mark.parametrize(("folder", "source", "expect"), [
    ("gossip", "import time\n", "imports time"),
    ("raft", "from trio import sleep\n", "imports trio"),
    ("gossip", "def f():\n    import socket\n", "imports socket"),
    ("raft", "from ..agent.server import x\n", "imports meshagent.agent.server"),
    ("gossip", "from meshagent.agent import config\n", "imports meshagent.agent"),
    ("raft", "import threading as t\n", "imports threading"),
    ("gossip", "from .messages import Ping\nfrom ..atomic_file import write_atomic\n", None),
])
def test_the_checker_catches_a_planted_import(tmp_path: Path, folder: str, source: str, expect: str | None) -> None:
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "planted.py").write_text(source)
    found = core_violations((folder,), tmp_path)
    if expect is None:
        assert found == []
    else:
        assert len(found) == 1 and expect in found[0], found


def test_the_io_edges_may_use_trio_but_not_the_agent(tmp_path: Path) -> None:
    (tmp_path / "gossip").mkdir()
    (tmp_path / "gossip" / "runtime.py").write_text("import trio\nimport socket\nfrom .. import agent\n")
    found = core_violations(("gossip",), tmp_path)
    assert len(found) == 1 and "meshagent.agent" in found[0], found


def test_cli_and_proxy_rules_catch_planted_imports(tmp_path: Path) -> None:
    for folder, source in (("cli", "from meshagent.agent.config.loader import load_config\n"
                                   "from meshagent.agent.server import fsm\n"
                                   "def f():\n    from ..agent.dns import server\n"),
                           ("proxy", "from ..agent import tls\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "planted.py").write_text(source)
    assert cli_agent_imports(tmp_path) == {("cli/planted.py", "meshagent.agent.server"),
                                           ("cli/planted.py", "meshagent.agent.dns")}
    assert proxy_violations(tmp_path) == ["proxy/planted.py:1 imports meshagent.agent"]
