"""bench/cluster: a VM fleet in network namespaces (3 servers + N-3 clients), measured end to end.

  .venv/bin/python bench/cluster/run.py [--agents 8 30] [--runs 5]

Figures (each with its reference, measured in the same run):
  * VM dies (kill -9 of a client) → gone from every agent's DNS; reference: every server's gossip
    marks it failed (the floor that SWIM sets; the rest is reconcile + Raft + feed).
  * service file + SIGHUP on one client → answered by another client's DNS; reference: a KV write
    through the first client read back (?stale) on the second (the bare write + replication path).
  * DNS answers during a leader kill: failures (should be 0) and the longest gap between good answers
    per agent; reference: the longest gap in the same loop before the kill.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.cluster_hosts import Cluster, Host
from tests.support.wait import wait_for

WEB = 'service {\n  name = "web"\n  port = 80\n}\n'


def vm_service(host: Host) -> str:
    """Every client also registers `vm` tagged with its name, so `<name>.vm.service.mesh` is exactly its own
    instance (DNS returns at most 3 of the `web` instances)."""
    return f'service {{\n  name = "vm"\n  tags = ["{host.name}"]\n  port = 1\n}}\n'


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def answers(addr: str, name: str) -> list[str] | None:
    """A records from one agent ([] for NXDOMAIN; None when it did not answer or answered with an error)."""
    try:
        reply = dns.query.udp(dns.message.make_query(name, "A"), addr, port=8600, timeout=1)
    except Exception:
        return None
    if reply.rcode() == dns.rcode.NXDOMAIN:
        return []
    if reply.rcode() != dns.rcode.NOERROR:
        return None
    return [rr.address for rrset in reply.answer for rr in rrset]


def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until predicate() holds (polled every 5 ms, the figures' resolution)."""
    start = time.monotonic()
    wait_for(predicate, timeout, 0.005, what)
    return time.monotonic() - start


def failed_on_servers(cluster: Cluster, victim: Host) -> bool:
    for s in cluster.servers:
        members = httpx.get(f"http://{s.address}:8500/v1/agent/members", timeout=2).json()
        if not any(m["Name"] == victim.name and m["Status"] == 4 for m in members):
            return False
    return True


def answered_everywhere(others: list[Host], name: str, expected: list[str]) -> Callable[[], bool]:
    """A condition: every agent in `others` answers `name` with exactly `expected`."""
    return lambda: all(answers(h.address, name) == expected for h in others)


def vm_dies(cluster: Cluster, runs: int) -> tuple[list[float], list[float]]:
    dns_times, gossip_times = [], []
    for i in range(runs):
        victim = cluster.clients[i % len(cluster.clients)]
        others = [h for h in cluster.running() if h is not victim]
        name = f"{victim.name}.vm.service.mesh"
        until(answered_everywhere(others, name, [victim.address]), 60, "victim in every answer")
        victim.kill()
        t0 = time.monotonic()
        done_dns = done_gossip = None
        while done_dns is None or done_gossip is None:
            now = time.monotonic() - t0
            if now > 60:
                raise TimeoutError(f"after 60 s: gone from DNS {done_dns}, failed in gossip {done_gossip}; answers "
                                   f"{[answers(h.address, name) for h in others]}")
            if done_gossip is None and failed_on_servers(cluster, victim):
                done_gossip = time.monotonic() - t0
            if done_dns is None and all(answers(h.address, name) == [] for h in others):
                done_dns = time.monotonic() - t0
        dns_times.append(done_dns)
        gossip_times.append(done_gossip)
        victim.start()
        until(answered_everywhere(others, name, [victim.address]), 60, "victim back")
        print(f"    run {i + 1}: gone from all DNS {done_dns:.2f} s, failed in gossip on all servers "
              f"{done_gossip:.2f} s", flush=True)
    return dns_times, gossip_times


def file_to_dns(cluster: Cluster, runs: int) -> tuple[list[float], list[float]]:
    a, b = cluster.clients[0], cluster.clients[-1]
    file_times, kv_times = [], []
    for i in range(runs):
        name = f"svc{i}"
        a.write_service(name, f'service {{\n  name = "{name}"\n  port = 9{i:03d}\n}}\n')
        t0 = time.monotonic()
        a.hup()
        until(answered_everywhere([b], f"{name}.service.mesh", [a.address]), 30, f"{name} on {b.name}")
        file_times.append(time.monotonic() - t0)
        a.remove_service(name)
        a.hup()
        value = f"v{i}".encode()
        t0 = time.monotonic()
        httpx.put(f"http://{a.address}:8500/v1/kv/bench/k{i}", content=value, timeout=10).raise_for_status()
        url = f"http://{b.address}:8500/v1/kv/bench/k{i}?raw&stale"
        until(lambda url=url, value=value: httpx.get(url, timeout=2).content == value, 30, "kv on b")
        kv_times.append(time.monotonic() - t0)
    return file_times, kv_times


def failover_gap(cluster: Cluster) -> tuple[int, int, float, float]:
    leader = next(s for s in cluster.servers
                  if httpx.get(f"http://{s.address}:8500/v1/agent/self", timeout=2).json()["Stats"]["raft"]["state"]
                  == "leader")
    targets = [h.address for h in cluster.running() if h is not leader]
    last_ok = {t: time.monotonic() for t in targets}
    gaps = {"before": 0.0, "after": 0.0}
    phase = ["before"]
    failures = [0]
    total = [0]
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for t in targets:
                got = answers(t, "web.service.mesh")
                now = time.monotonic()
                total[0] += 1
                if not got:
                    failures[0] += 1
                    continue
                gaps[phase[0]] = max(gaps[phase[0]], now - last_ok[t])
                last_ok[t] = now

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    time.sleep(3)  # the reference window: the same loop before the kill
    phase[0] = "after"
    leader.kill()
    until(lambda: any(s is not leader and s.running and
                      httpx.get(f"http://{s.address}:8500/v1/agent/self", timeout=2).json()["Stats"]["raft"]["state"]
                      == "leader" for s in cluster.servers), 30, "a new leader")
    time.sleep(3)
    stop.set()
    thread.join()
    leader.start()
    return failures[0], total[0], gaps["after"], gaps["before"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[8, 30])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for n in args.agents:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            cluster = Cluster(Path(tmp), servers=3, clients=n - 3)
            try:
                for c in cluster.clients:
                    c.write_service("web", WEB)
                    c.write_service("vm", vm_service(c))
                cluster.start()
                where = "namespaces" if cluster.isolated else "loopback"
                print(f"\n== {n} agents (3 servers, {n - 3} clients), {where}")
                for c in cluster.clients:
                    until(answered_everywhere(cluster.running(), f"{c.name}.vm.service.mesh", [c.address]), 120,
                          f"{c.name}'s vm on every agent")
                dns_t, gossip_t = vm_dies(cluster, args.runs)
                d, g = statistics.median(dns_t), statistics.median(gossip_t)
                print(f"  VM dies -> gone from every agent's DNS: median {d:.2f} s (max {max(dns_t):.2f}); "
                      f"reference, failed in gossip on every server: {g:.2f} s; ratio {d / g:.2f}x")
                f, k = file_to_dns(cluster, args.runs)
                fm, km = statistics.median(f), statistics.median(k)
                print(f"  service file + SIGHUP -> another agent's DNS: median {fm * 1000:.0f} ms; reference, KV write "
                      f"via one client read on another: {km * 1000:.0f} ms; ratio {fm / km:.2f}x")
                fails, total, gap, ref_gap = failover_gap(cluster)
                print(f"  leader kill: {fails} failed or empty DNS answers of {total}; longest gap between good "
                      f"answers {gap * 1000:.0f} ms (reference before the kill {ref_gap * 1000:.0f} ms; "
                      f"ratio {gap / ref_gap:.2f}x)")
            finally:
                cluster.stop()


if __name__ == "__main__":
    main()
