"""The host harness itself (tests/support/cluster_hosts.py): namespaces, agents, gossip, cut/heal, cleanup.

Only what the harness promises is tested here; the cluster features (catalog on clients, serfHealth in
DNS, ...) are tests/cluster/test_acceptance.py's. Waits are on conditions, 30 s bounds.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cluster_hosts import (
    SERVICES,
    TEMPLATES,
    Cluster,
    ClusterWarning,
    DigError,
    Host,
    NotIsolated,
    cleanup_stale,
    layout,
    proc_start_time,
    registry_dir,
    render,
)
from tests.support.netns import Hosts

pytestmark = pytest.mark.slow

ALIVE, LEFT, FAILED = 1, 3, 4


def _tcp_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _status_everywhere(cluster: Cluster, observers: list[Host], name: str, status: int) -> bool:
    return all(h.members().get(name) == status for h in observers)


def _leftovers(run: str) -> list[str]:
    """Namespaces and links of a run that still exist."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = [json_link["ifname"] for json_link in json.loads(
        subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout or "[]")]
    return [n for n in namespaces + links if n.startswith(run)]


# ---------------------------------------------------------------------- the shared cluster


def test_each_host_has_its_own_namespace_and_is_reachable_from_the_test(cluster: Cluster) -> None:
    assert len({h.address for h in cluster.hosts}) == len(cluster.hosts)
    for h in cluster.hosts:
        assert _tcp_open(h.address, 8500), f"{h.name}: no TCP connect to {h.address}:8500"
        if cluster.isolated:
            inside = h.exec(["ip", "-4", "-o", "addr", "show"], check=True).stdout
            addresses = {line.split()[3].split("/")[0] for line in inside.splitlines()}
            assert addresses == {"127.0.0.1", h.address}, f"{h.name} sees {addresses}"
    if not cluster.isolated:
        pytest.skip("loopback fallback: reachable, but no namespaces to look into")
    assert [s.address.rsplit(".", 1)[1] for s in cluster.servers] == ["11", "12", "13"]
    assert [c.address.rsplit(".", 1)[1] for c in cluster.clients] == ["21", "22"]


def test_agents_answer_on_their_own_address_with_the_rendered_vagrant_config(cluster: Cluster) -> None:
    for h in cluster.hosts:
        me = h.http("/v1/agent/self")
        assert me["Config"]["NodeName"] == h.name
        assert me["Config"]["Server"] is h.is_server
        assert me["Member"]["Addr"] == h.address
        expected = render.render_file(TEMPLATES / f"{h.role}.hcl.tmpl", h.template_values())
        assert h.config_file.read_text() == expected
        assert f'bind_addr          = "{h.address}"' in expected


def test_gossip_membership_converges_on_every_host(cluster: Cluster) -> None:
    names = {h.name for h in cluster.hosts}
    cluster.wait_until(lambda: all(h.members() == dict.fromkeys(names, ALIVE) for h in cluster.hosts), 30,
                       "every host to list exactly every host alive")


def test_every_agent_notifies_ready_after_joining(cluster: Cluster) -> None:
    cluster.wait_until(lambda: all(h.ready_notified for h in cluster.hosts), 30, "READY=1 from every agent")


def test_exec_runs_inside_the_host(cluster: Cluster) -> None:
    if not cluster.isolated:
        pytest.skip("loopback fallback: exec runs in the test's own network")
    client = cluster.clients[0]
    out = client.exec(["meshagent", "members", "-format", "json"],
                      env={"MESH_HTTP_ADDR": "http://127.0.0.1:8500"}, check=True).stdout
    assert {m["Name"] for m in json.loads(out)} == {h.name for h in cluster.hosts}
    info = client.exec(["meshagent", "info"], env={"MESH_HTTP_ADDR": "http://127.0.0.1:8500"}, check=True).stdout
    assert client.name in info


def test_dig_returns_answers_and_empty_for_nxdomain(cluster: Cluster) -> None:
    server = cluster.servers[0]
    got = cluster.wait_until(lambda: server.dig(f"{server.name}.node.mesh"), 30, "an A record for the server")
    assert got == [server.address]
    assert server.dig("no-such-service.service.mesh") == []
    assert server.dig(f"{server.name}.node.mesh", "AAAA") == []


def test_service_files_are_read_at_sighup_and_removed(cluster: Cluster) -> None:
    client = cluster.clients[0]
    client.write_service("web", SERVICES / "web.hcl")
    client.write_service("cache", {"service": {"name": "cache", "port": 6379}})
    client.hup()
    try:
        cluster.wait_until(lambda: {"web", "cache"} <= set(client.http("/v1/agent/services")), 30,
                           "web and cache registered from their files")
        checks = client.http("/v1/agent/checks")
        assert any(c["ServiceName"] == "web" and c["Type"] == "http" for c in checks.values())
    finally:
        client.remove_service("web")
        client.remove_service("cache")
        client.hup()
    cluster.wait_until(lambda: not {"web", "cache"} & set(client.http("/v1/agent/services")), 30,
                       "web and cache gone after their files were removed")


def test_kill_marks_the_host_failed_and_start_brings_it_back(cluster: Cluster) -> None:
    victim = cluster.clients[1]
    others = [h for h in cluster.hosts if h is not victim]
    pid = victim.pid
    assert victim.kill() == -signal.SIGKILL
    assert not victim.running and pid is not None and proc_start_time(pid) is None
    cluster.wait_until(lambda: _status_everywhere(cluster, others, victim.name, FAILED), 30,
                       f"every other host to mark the killed {victim.name} failed")
    victim.start()
    assert victim.pid != pid
    cluster.wait_until(lambda: cluster.members_converged(cluster.hosts), 30, f"{victim.name} alive again")


def test_cut_makes_a_host_unreachable_and_heal_brings_it_back(cluster: Cluster) -> None:
    cluster.require_isolation()
    victim = cluster.clients[1]
    others = [h for h in cluster.hosts if h is not victim]
    cluster.wait_until(lambda: cluster.members_converged(cluster.hosts), 30, "everyone alive before the cut")
    victim.cut()
    try:
        assert not _tcp_open(victim.address, 8500, timeout=1.0)
        with pytest.raises(DigError):
            victim.dig(f"{victim.name}.node.mesh", timeout=1)
        cluster.wait_until(lambda: _status_everywhere(cluster, others, victim.name, FAILED), 30,
                           f"every other host to mark the cut-off {victim.name} failed")
        assert victim.running, "the agent of a cut host keeps running"
        assert victim.exec(["ip", "-o", "link", "show", "eth0"]).stdout.count("state DOWN") == 1
    finally:
        victim.heal()
    assert _tcp_open(victim.address, 8500, timeout=2.0)
    cluster.wait_until(lambda: cluster.members_converged(cluster.hosts), 30,
                       f"{victim.name} alive on every host after the heal")
    stopped = [h.name for h in cluster.hosts if not h.running]
    assert stopped == [], f"agents exited during the cut/heal: {stopped}\n{cluster.report(40)}"


def test_wait_until_reports_every_hosts_log_tail(cluster: Cluster) -> None:
    with pytest.raises(AssertionError) as err:
        cluster.wait_until(lambda: 1 / 0, 0.2, "the impossible")
    text = str(err.value)
    assert "the impossible" in text and "ZeroDivisionError" in text
    for h in cluster.hosts:
        assert h.name in text and str(h.log_path) in text
    assert "agent started" in text or "[DEBUG]" in text or "[INFO]" in text


# ---------------------------------------------------------------------- clusters of their own


def test_stop_removes_every_namespace_link_and_process(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory(1, 1)
    c.start()
    pids = [(h.pid, h.start_time) for h in c.hosts]
    run = c.run
    if c.isolated:
        assert len(_leftovers(run)) == 1 + 2 * 2  # bridge, and per host a namespace and a veth
    assert (registry_dir() / f"{run}.json").exists()
    assert c.stop() == []
    for pid, start in pids:
        assert pid is not None and proc_start_time(pid) != start, f"agent {pid} still runs"
    assert _leftovers(run) == []
    assert not (registry_dir() / f"{run}.json").exists()
    assert c.stop() == []  # again: nothing to do, no error
    with pytest.raises(RuntimeError):
        c.hosts[0].start()


def _orphan(run: str) -> None:
    """Make a run's registry record name a dead owner, as if the test process that made it had been killed."""
    record = registry_dir() / f"{run}.json"
    state = json.loads(record.read_text())
    dead = subprocess.Popen(["true"])
    dead.wait()
    state["owner"] = {"pid": dead.pid, "start": 1}
    record.write_text(json.dumps(state))


def test_runs_left_behind_by_a_dead_owner_are_removed(cluster_factory: Callable[..., Cluster]) -> None:
    prefix = "mvt"  # not the default prefix: concurrent real runs are not affected
    crashed = cluster_factory(1, 0, prefix=prefix)
    crashed.start(wait=False)
    pid, start = crashed.hosts[0].pid, crashed.hosts[0].start_time
    _orphan(crashed.run)
    try:
        if crashed.isolated:
            subprocess.run(["ip", "netns", "add", f"{prefix}zzzz-orphan"], check=True)  # unrecorded leftover
        removed = cleanup_stale(prefix)  # what every new Cluster does first
        assert crashed.run in removed
        assert pid is not None and proc_start_time(pid) != start, "the crashed run's agent still runs"
        assert _leftovers(crashed.run) == [] and not (registry_dir() / f"{crashed.run}.json").exists()
        assert _leftovers(f"{prefix}zzzz") == []
        survivor = cluster_factory(1, 0, prefix=prefix)  # a live owner: left alone
        assert survivor.run not in cleanup_stale(prefix)
        assert (registry_dir() / f"{survivor.run}.json").exists()
        if survivor.isolated:
            assert len(_leftovers(survivor.run)) == 3
    finally:
        subprocess.run(["ip", "netns", "delete", f"{prefix}zzzz-orphan"], capture_output=True)


def test_loopback_fallback_runs_agents_and_refuses_cuts(cluster_factory: Callable[..., Cluster]) -> None:
    with pytest.warns(ClusterWarning, match="loopback"):
        c = cluster_factory(1, 1, isolate=False)
    assert not c.isolated
    assert all(h.address.startswith("127.18.") and h.netns is None for h in c.hosts)
    c.start()
    assert c.members_converged(c.hosts)
    with pytest.raises(NotIsolated):
        c.clients[0].cut()
    with pytest.raises(pytest.skip.Exception):
        c.require_isolation()


def _connects(prefix: list[str], address: str, port: int) -> bool:
    """A TCP connect to address:port from a process run with `prefix` (inside a host's namespace)."""
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, timeout=20).returncode == 0


def test_bare_hosts_share_the_registry_with_clusters(cluster_factory: Callable[..., Cluster]) -> None:
    """netns.Hosts (the Raft suites' hosts) and a Cluster in the same run take different /24s, cut and heal
    the same way, and leave nothing behind; a Hosts run whose owner died is removed by the next one."""
    c = cluster_factory(1, 0)
    if not c.isolated:
        pytest.skip("no network namespaces here")
    hosts = Hosts()
    run = hosts.run
    listener = None
    try:
        a, b = hosts.add(), hosts.add()
        subnet = ipaddress.ip_network(hosts.subnet)
        assert not subnet.overlaps(ipaddress.ip_network(c.subnet))
        assert [ipaddress.ip_address(h.address) in subnet for h in (a, b)] == [True, True]
        assert (registry_dir() / f"{run}.json").exists()
        assert len(_leftovers(run)) == 1 + 2 * 2  # bridge, and per host a namespace and a veth
        listener = subprocess.Popen([*b.prefix, sys.executable, "-m", "http.server", "--bind", b.address, "8123"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        c.wait_until(lambda: _connects(a.prefix, b.address, 8123), 30, "a to reach b")
        assert _connects([], b.address, 8123), "the test process reaches every host"
        hosts.cut(b)
        assert not _connects(a.prefix, b.address, 8123)
        hosts.heal(b)
        c.wait_until(lambda: _connects(a.prefix, b.address, 8123), 30, "a to reach b after the heal")
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
        hosts.close()
    assert _leftovers(run) == [] and not (registry_dir() / f"{run}.json").exists()

    crashed = Hosts()
    crashed.add()
    _orphan(crashed.run)
    survivor = Hosts()  # its start cleans up stale runs of the same prefix
    try:
        assert _leftovers(crashed.run) == [] and not (registry_dir() / f"{crashed.run}.json").exists()
        assert (registry_dir() / f"{survivor.run}.json").exists()
    finally:
        survivor.close()
        crashed.close()


def test_layout_and_rendering(tmp_path: Path) -> None:
    assert [o for _, _, o in layout(3, 5)] == [11, 12, 13, 21, 22, 23, 24, 25]
    assert [o for _, _, o in layout(12, 2)] == [*range(11, 23), 23, 24]
    with pytest.raises(ValueError):
        layout(3, 300)
    with pytest.raises(render.RenderError, match=r"no value for .*bootstrap_expect"):
        render.render_file("server.hcl.tmpl", {"datacenter": "dc1"})
    assert render.hcl_value(["a", 'b"c']) == '["a", "b\\"c"]'
    out = tmp_path / "x.hcl"
    assert render.main([str(TEMPLATES / "client.hcl.tmpl"), "datacenter=dc1", "node_name=n", "data_dir=/d",
                        "log_level=info", "bind_addr=1.2.3.4", "client_addr=0.0.0.0", "retry_join+=1.2.3.5",
                        "-o", str(out)]) == 0
    assert 'retry_join         = ["1.2.3.5"]' in out.read_text()
