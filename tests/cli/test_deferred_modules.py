"""Modules the agent defers: a placeholder loads the real module on first use, and a running agent maps no
TLS library until something needs one."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import httpx
import pytest
from meshagent.cli.deferred_modules import DeferredModule, defer

from tests.support.agents import AgentProcess
from tests.support.wait import wait_for

PROBE = "meshagent_deferred_probe"


@pytest.fixture
def probe_module(tmp_path: Path) -> Iterator[Path]:
    """A module on sys.path that counts how often its body runs (in a file next to it)."""
    (tmp_path / f"{PROBE}.py").write_text(
        "from pathlib import Path\n"
        "runs = Path(__file__).with_suffix('.runs')\n"
        "runs.write_text(str(int(runs.read_text() or 0) + 1) if runs.exists() else '1')\n"
        "VALUE = 42\n"
        "def double(x):\n    return 2 * x\n")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path / f"{PROBE}.runs"
    sys.path.remove(str(tmp_path))
    sys.modules.pop(PROBE, None)


def test_a_deferred_module_loads_on_first_attribute_and_once(probe_module: Path) -> None:
    defer(PROBE)
    import meshagent_deferred_probe as probe  # type: ignore[import-not-found]

    assert isinstance(probe, DeferredModule)
    assert not probe_module.exists()  # the import statement alone ran nothing
    assert probe.VALUE == 42
    assert probe.double(4) == 8
    from meshagent_deferred_probe import double  # type: ignore[import-not-found]

    assert double(1) == 2
    assert probe_module.read_text() == "1"


def test_a_module_that_fails_to_load_raises_each_time_and_stays_deferred(tmp_path: Path) -> None:
    (tmp_path / f"{PROBE}.py").write_text("raise RuntimeError('broken on purpose')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        defer(PROBE)
        placeholder = sys.modules[PROBE]
        for _ in range(2):
            with pytest.raises(RuntimeError, match="broken on purpose"):
                _ = placeholder.anything
            assert sys.modules[PROBE] is placeholder
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(PROBE, None)


def test_defer_leaves_loaded_and_unknown_modules_alone() -> None:
    json_module = sys.modules["json"]
    defer("json")
    assert sys.modules["json"] is json_module
    defer("meshagent_no_such_module")
    assert "meshagent_no_such_module" not in sys.modules


def _maps_tls(agent: AgentProcess) -> bool:
    assert agent.proc is not None
    return "libssl" in Path(f"/proc/{agent.proc.pid}/maps").read_text()


def test_an_agent_loads_tls_only_when_a_check_needs_it(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory()
    query = dns.message.make_query("consul.service.mesh", "A")
    dns.query.udp(query, agent.host, port=agent.dns_port, timeout=5)
    assert httpx.get(f"{agent.http_addr}/v1/agent/members").status_code == 200
    assert not _maps_tls(agent), "an agent serving HTTP and DNS mapped libssl"
    # An HTTP check loads httpx, whose TLS code goes through the placeholder: the check must work.
    check = {"Name": "closed", "HTTP": f"http://{agent.host}:1/", "Interval": "1s", "TLSSkipVerify": True}
    assert httpx.put(f"{agent.http_addr}/v1/agent/check/register", json=check).status_code == 200

    def critical_with_reason() -> bool:
        got = httpx.get(f"{agent.http_addr}/v1/agent/checks").json().get("closed", {})
        return got.get("Status") == "critical" and "ConnectError" in got.get("Output", "")

    wait_for(critical_with_reason, 20, what="the HTTP check to fail with a connection error")
    assert agent.proc is not None and agent.proc.poll() is None
