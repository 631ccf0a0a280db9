"""ACL benchmark (issue 15): `GET /v1/health/service/db?passing` with a token under default deny against the
same request with ACLs off, in one run; then token resolution on a client, cached vs uncached (resolve.py).

    .venv/bin/python bench/acl/run.py [--rounds 3] [--duration 5] [--connections 16] [--instances 100]
                                      [--skip-http] [--strict]

Two real `meshagent agent -dev` processes on 127.0.45.N: one with ACLs off, one with
`acl { enabled = true default_policy = "deny" tokens { initial_management } }`. Both get the same service
data: `--instances` nodes, each with one db instance and a passing check (PUT /v1/catalog/register). The
token wrk sends holds one policy (`service "db" read`, `node_prefix "" read`), so every instance is read
and checked, nothing is filtered (the answer is byte-identical to the ACLs-off one: checked before timing).
Each round runs wrk (-t1, -cN, keep-alive, 1 s unmeasured warm-up) against both agents, the order
alternating per round; one agent is loaded at a time. Printed: medians of req/s, p50/p99 and the agent's
CPU per request (/proc utime+stime over the measured run), the median of the per-round ratios acl/off
(target ≥ 0.9x) and of the CPU-per-request ratios, errors, the machine. `--strict` exits 2 below target.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)
from resolve import report as resolve_report  # noqa: E402  (bench/acl/resolve.py)
from wrk_tool import ensure_wrk, wrk_summary  # noqa: E402  (bench/wrk_tool.py)

from tests.support.agents import AgentProcess  # noqa: E402
from tests.support.ports import ports_free  # noqa: E402
from tests.support.wait import wait_for  # noqa: E402

URL_PATH = "/v1/health/service/db?passing"
TARGET = 0.9
READ_RULES = 'service "db" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def free_hosts(n: int) -> list[str]:
    """`n` addresses 127.0.45.N (N from 200 down) with the agent's ports free."""
    found = [f"127.0.45.{i}" for i in range(200, 100, -1) if ports_free(f"127.0.45.{i}")][:n]
    if len(found) < n:
        sys.exit("no free 127.0.45.N (101-200) for the agents")
    return found


def start(host: str, workdir: Path, acl_mgmt: str | None) -> AgentProcess:
    args = ["-dev", "-client", host, "-bind", host, "-node", f"bench-{'acl' if acl_mgmt else 'off'}",
            "-log-level", "warn"]
    if acl_mgmt:
        conf = workdir / "acl.hcl"
        conf.write_text(f'acl {{\n  enabled = true\n  default_policy = "deny"\n'
                        f'  tokens {{\n    initial_management = "{acl_mgmt}"\n  }}\n}}\n')
        args += ["-config-file", str(conf)]
    return AgentProcess(host=host, workdir=workdir, args=args).start()


def call(agent: AgentProcess, method: str, path: str, token: str | None, body: Any = None) -> Any:
    headers = {"X-Consul-Token": token} if token else {}
    resp = httpx.request(method, agent.http_addr + path, headers=headers, json=body, timeout=10, trust_env=False)
    if resp.status_code != 200:
        raise RuntimeError(f"{method} {path} on {agent.host}: {resp.status_code} {resp.text}")
    return resp.json()


def seed(agent: AgentProcess, instances: int, token: str | None) -> None:
    """`instances` nodes, each with db and a passing service check."""
    for i in range(instances):
        node = f"node-{i}"
        call(agent, "PUT", "/v1/catalog/register", token, {
            "Node": node, "Address": f"10.0.{i // 250}.{i % 250 + 1}",
            "Service": {"ID": f"db-{i}", "Service": "db", "Port": 5432, "Tags": ["primary"]},
            "Check": {"CheckID": f"db-{i}-alive", "Name": "db alive", "Status": "passing", "ServiceID": f"db-{i}"}})


def read_token(agent: AgentProcess, mgmt: str) -> str:
    """A token with READ_RULES, made over the agent's /v1/acl API."""
    policy = call(agent, "PUT", "/v1/acl/policy", mgmt, {"Name": "db-reader", "Rules": READ_RULES})
    return str(call(agent, "PUT", "/v1/acl/token", mgmt, {"Policies": [{"ID": policy["ID"]}]})["SecretID"])


def normalised(body: bytes) -> bytes:
    """The body without what differs between two agents for the same data (node names of the agents, indexes)."""
    return re.sub(rb'"(CreateIndex|ModifyIndex)":\d+', b"", body)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(wrk: str, agent: AgentProcess, duration: int, connections: int, token: str | None) -> dict[str, str]:
    url = agent.http_addr + URL_PATH
    header = ["-H", f"X-Consul-Token: {token}"] if token else []
    subprocess.run([wrk, "-t1", f"-c{connections}", "-d1s", *header, url], check=True, capture_output=True)
    assert agent.proc is not None
    cpu0 = cpu_seconds(agent.proc.pid)
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *header, url],
                         check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(agent.proc.pid) - cpu0
    result = wrk_summary(out)
    result["cpu_us"] = f"{cpu / max(1, int(result['requests'])) * 1e6:.0f}"
    return result


def http_bench(args: argparse.Namespace) -> float:
    wrk = ensure_wrk()
    print(f"load generator: {subprocess.run([wrk, '-v'], capture_output=True, text=True).stdout.splitlines()[0]}"
          f"  (-t1 -c{args.connections} -d{args.duration}s, keep-alive, {args.rounds} rounds)")
    mgmt = str(uuid.uuid4())
    workdir = Path(tempfile.mkdtemp(prefix="bench-acl-"))
    off_host, acl_host = free_hosts(2)
    off = start(off_host, workdir, None)
    acl = None
    try:
        acl = start(acl_host, workdir, mgmt)
        wait_for(lambda: call(acl, "GET", "/v1/acl/token/self", mgmt), 15, 0.05,  # type: ignore[arg-type]
                 "the initial management token to be written")
        seed(off, args.instances, None)
        seed(acl, args.instances, mgmt)
        token = read_token(acl, mgmt)
        plain = httpx.get(off.http_addr + URL_PATH, timeout=10, trust_env=False)
        guarded = httpx.get(acl.http_addr + URL_PATH, headers={"X-Consul-Token": token}, timeout=10, trust_env=False)
        assert len(plain.json()) == len(guarded.json()) == args.instances, (len(plain.json()), len(guarded.json()))
        assert "x-consul-results-filtered-by-acls" not in guarded.headers
        assert normalised(plain.content) == normalised(guarded.content), "the two agents answer different bodies"
        anon = httpx.get(acl.http_addr + URL_PATH, timeout=10, trust_env=False)
        assert anon.status_code == 200 and anon.json() == [], (anon.status_code, anon.text)  # default deny holds
        results: dict[str, list[dict[str, str]]] = {"off": [], "acl": []}
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        for r in range(args.rounds):
            order = [("off", off, None), ("acl", acl, token)]
            for name, agent, tok in order if r % 2 == 0 else reversed(order):
                results[name].append(run_wrk(wrk, agent, args.duration, args.connections, tok))
            ratios.append(float(results["acl"][-1]["rps"]) / float(results["off"][-1]["rps"]))
            cpu_ratios.append(float(results["acl"][-1]["cpu_us"]) / float(results["off"][-1]["cpu_us"]))
    finally:
        off.stop()
        if acl is not None:
            acl.stop()
    print(f"\nGET {URL_PATH}  ({args.instances} instances, all passing; medians of {args.rounds} rounds)")
    for name, label in (("off", "ACLs off"), ("acl", "default deny + token")):
        rows = results[name]
        rps = statistics.median(float(x["rps"]) for x in rows)
        cpu = statistics.median(float(x["cpu_us"]) for x in rows)
        print(f"  {label:<22}: {rps:9.0f} req/s   p50 {rows[len(rows) // 2]['50%']:>8}  "
              f"p99 {rows[len(rows) // 2]['99%']:>8}   agent CPU {cpu:5.0f} µs/req   "
              f"errors: {', '.join(sorted({x['errors'] for x in rows}))}")
    ratio = statistics.median(ratios)
    print(f"  ratio acl/off (median of per-round ratios {', '.join(f'{x:.2f}' for x in ratios)}): {ratio:.2f}"
          f"   target >= {TARGET}")
    print(f"  agent CPU per request acl/off (median of {', '.join(f'{x:.2f}' for x in cpu_ratios)}): "
          f"{statistics.median(cpu_ratios):.2f}   (steadier than req/s on a shared machine)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--cached", type=int, default=200_000, help="resolves in the cached loop")
    parser.add_argument("--changes", type=int, default=300, help="writes per uncached case")
    parser.add_argument("--skip-http", action="store_true", help="only the in-process resolution figures")
    parser.add_argument("--strict", action="store_true", help=f"exit 2 when the ratio is below {TARGET}")
    args = parser.parse_args()
    print(f"machine: {machine_info()}")
    ratio = None if args.skip_http else http_bench(args)
    print()
    print("\n".join(resolve_report(args.cached, args.changes)))
    if args.strict and ratio is not None and ratio < TARGET:
        sys.exit(2)


if __name__ == "__main__":
    main()
