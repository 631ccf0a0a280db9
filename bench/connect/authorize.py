"""Authorize benchmark: `POST /v1/agent/connect/authorize` against `GET /v1/status/leader` on the same agent,
and in-process L4 decisions over 1,000 intentions.

    .venv/bin/python bench/connect/authorize.py [--duration 10] [--connections 16] [--intentions 1000]

Our side: one server and one client `meshagent agent` (tests/support/cluster_hosts.py, loopback 127.18.K.N).
`--intentions` L4 intentions are written as service-intentions entries (100 destinations x N/100 sources)
through the client's `PUT /v1/config`; once the client's authorize reflects the last one, wrk (Debian
package; `apt-get install -y wrk` when missing) sends keep-alive POSTs from `--connections` connections to the
client, cycling over sources and destinations (matches and misses), then GETs `/v1/status/leader` to the same
agent with the same connections and duration: the reference, the agent's cheapest endpoint (a route, no
body, a tiny JSON answer). Target: authorize >= 0.8 x the reference's requests/s.

In-process: agent/connect/intentions.py `IntentionIndex.decide` (the agent's path; reference: `decide_l4` over
the whole list) over the same intentions, cycling over the same pairs, decisions/s (after the cluster has
stopped, so it has the machine to itself); bounded by count and time.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
from machine import machine_info  # noqa: E402  (bench/machine.py)
from meshagent.agent.connect.intentions import Action, Intention, IntentionIndex, decide_l4, ordered  # noqa: E402
from wrk_tool import ensure_wrk, wrk_summary  # noqa: E402  (bench/wrk_tool.py)

from tests.support.cluster_hosts import Cluster, ClusterWarning, Host  # noqa: E402
from tests.support.mesh import (  # noqa: E402
    authorize,
    connect_hcl,
    put_entry,
    service_uri,
    wait_ca,
    write_extra_config,
)

DESTINATIONS = 100
LUA = """
-- POST /v1/agent/connect/authorize, cycling over {n} bodies (sources and destinations, matches and misses)
local bodies = {{{bodies}}}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/v1/agent/connect/authorize", {{["Content-Type"] = "application/json"}}, bodies[i])
end
"""


def run_wrk(wrk: str, url: str, duration: int, connections: int, script: Path | None) -> dict[str, str]:
    """wrk's requests/s, p50, p99 and errors for one URL."""
    extra = ["-s", str(script)] if script else []
    subprocess.run([wrk, "-t1", f"-c{connections}", "-d1s", *extra, url], check=True, capture_output=True)
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--latency", *extra, url],
                         check=True, capture_output=True, text=True, timeout=duration + 60).stdout
    return wrk_summary(out)


def sources_per_destination(total: int) -> int:
    return max(1, total // DESTINATIONS)


def write_intentions(client: Host, total: int) -> list[Intention]:
    """service-intentions entries for dst-0..99, each with `total`/100 sources, every third one a deny."""
    per = sources_per_destination(total)
    compiled = []
    for d in range(DESTINATIONS):
        sources = [{"Name": f"src-{s}", "Action": "deny" if s % 3 == 0 else "allow"} for s in range(per)]
        put_entry(client, {"Kind": "service-intentions", "Name": f"dst-{d}", "Sources": sources})
        compiled += [Intention(f"src-{s}", f"dst-{d}", Action(src["Action"])) for s, src in enumerate(sources)]
    return compiled


def in_process(intentions: list[Intention], indexed: bool = True, cap: float = 5.0,
               count: int = 200_000) -> tuple[int, float]:
    """(decisions, seconds) cycling over sources and destinations: through IntentionIndex.decide (what the
    agent's authorize does), or, with indexed=False, decide_l4 over the whole list (the reference)."""
    per = sources_per_destination(len(intentions))
    pairs = [(f"src-{s}", f"dst-{d}") for d in range(0, DESTINATIONS, 7) for s in range(0, per + 3, 2)]
    index = IntentionIndex(intentions)  # as the agent caches them: compiled once per change
    whole = ordered(intentions)
    done = 0
    start = time.perf_counter()
    while done < count and time.perf_counter() - start < cap:
        for source, destination in pairs:
            if indexed:
                index.decide(source, destination)
            else:
                decide_l4(whole, source, destination)
        done += len(pairs)
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--intentions", type=int, default=1000)
    args = parser.parse_args()
    warnings.simplefilter("ignore", ClusterWarning)  # loopback hosts on purpose: no namespaces needed here
    logging.getLogger("tests.support.cluster_hosts").setLevel(logging.ERROR)
    print(f"machine: {machine_info()}")
    wrk = ensure_wrk()
    print(f"load generator: {subprocess.run([wrk, '-v'], capture_output=True, text=True).stdout.splitlines()[0]}"
          f"  (-t1 -c{args.connections} -d{args.duration}s, keep-alive)")

    with tempfile.TemporaryDirectory(prefix="bench-authz-") as tmp:
        cluster = Cluster(Path(tmp) / "cluster", servers=1, clients=1, isolate=False, log_level="info")
        try:
            write_extra_config(cluster, "connect.hcl", connect_hcl("1s"))
            cluster.start(timeout=120)
            td = wait_ca(cluster, timeout=120)["TrustDomain"]
            client = cluster.clients[0]
            compiled = write_intentions(client, args.intentions)
            last_dst, last_src = f"dst-{DESTINATIONS - 1}", "src-0"  # src-0 is a deny everywhere
            cluster.wait_until(lambda: authorize(client, last_dst, service_uri(td, last_src))["Authorized"] is False,
                               60, "the client's authorize to see the last entry")
            per = sources_per_destination(args.intentions)
            bodies = [f'{{"Target":"dst-{d}","ClientCertURI":"{service_uri(td, f"src-{s}")}",'
                      f'"ClientCertSerial":"01"}}'
                      for d in range(0, DESTINATIONS, 7) for s in range(0, per + 3, 2)]
            script = Path(tmp) / "authorize.lua"
            script.write_text(LUA.format(n=len(bodies), bodies=", ".join(f"[[{b}]]" for b in bodies)))
            authz = run_wrk(wrk, client.http_addr + "/v1/agent/connect/authorize", args.duration,
                            args.connections, script)
            status = run_wrk(wrk, client.http_addr + "/v1/status/leader", args.duration, args.connections, None)
        finally:
            cluster.stop()

    decisions, seconds = in_process(compiled)
    whole, whole_s = in_process(compiled, indexed=False)
    ratio = float(authz["rps"]) / float(status["rps"])
    print(f"\n{len(compiled)} L4 intentions ({DESTINATIONS} service-intentions entries), on a client agent")
    print(f"  POST /v1/agent/connect/authorize : {float(authz['rps']):9.0f} req/s   p50 {authz['50%']:>8}   "
          f"p99 {authz['99%']:>8}   errors: {authz['errors']}")
    print(f"  GET  /v1/status/leader (ref)     : {float(status['rps']):9.0f} req/s   p50 {status['50%']:>8}   "
          f"p99 {status['99%']:>8}   errors: {status['errors']}")
    print(f"  ratio authorize/status: {ratio:.2f} (target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})")
    print(f"  in-process IntentionIndex.decide over {len(compiled)} intentions (the agent's cache): "
          f"{decisions / seconds:,.0f} decisions/s "
          f"({decisions} in {seconds:.2f} s, {seconds / decisions * 1e6:.1f} us each)")
    print(f"  in-process decide_l4 over the whole list (reference): "
          f"{whole / whole_s:,.0f} decisions/s ({whole_s / whole * 1e6:.1f} us each)")


if __name__ == "__main__":
    main()
