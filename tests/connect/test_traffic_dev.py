"""Traffic management end to end on ONE real -dev agent: three web instances (v1, v1, v2 by Meta) and an admin
instance behind agent-run sidecars, a frontend sidecar with an http upstream to web. A resolver with subsets
and a 90/10 splitter written over HTTP put 10 % +- 3 % of 2,000 requests on v2; a router then sends
/admin to admin and `x-canary: 1` to v2, everything else still split."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

UPSTREAM_PORT = 9191
INSTANCES = (("web-1", "web", "v1", 21001), ("web-2", "web", "v1", 21002), ("web-3", "web", "v2", 21003),
             ("admin-1", "admin", "v1", 21004))
FRONT_PORT = 21005
REQUESTS = 2000


class App:
    """One application instance: HTTP/1.1 keep-alive, answers "<id> <path>" (real sockets, its own thread)."""

    def __init__(self, host: str, ident: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = f"{ident} {self.path}".encode()
                # One write: head and body apart would meet Nagle and a delayed ACK (40 ms a request).
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def service_hcl(host: str, sid: str, name: str, version: str, sidecar_port: int, app_port: int) -> str:
    return f"""
service {{
  id      = "{sid}"
  name    = "{name}"
  address = "{host}"
  port    = {app_port}
  meta {{ version = "{version}" }}
  connect {{
    sidecar_service {{
      port = {sidecar_port}
      check {{
        tcp      = "{host}:{sidecar_port}"
        interval = "1s"
      }}
      proxy {{ local_service_address = "{host}" }}
    }}
  }}
}}
"""


FRONT = """
service {{
  name = "front"
  port = 7000
  connect {{
    sidecar_service {{
      port = {front_port}
      proxy {{
        upstreams {{
          destination_name   = "web"
          local_bind_address = "{host}"
          local_bind_port    = {upstream_port}
        }}
      }}
    }}
  }}
}}
"""


def agent_host() -> str:
    wanted = (8500, 8600, 8300, 8301, UPSTREAM_PORT, FRONT_PORT, *(i[3] for i in INSTANCES))
    for n in range(10, 250):
        host = f"127.0.32.{n}"
        if ports_free(host, wanted):
            return host
    raise RuntimeError("no free 127.0.32.N")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, httpx.Client, httpx.Client]]:
    tmp: Path = tmp_path_factory.mktemp("traffic")
    host = agent_host()
    apps = [App(host, sid) for sid, *_ in INSTANCES]
    conf = tmp / "conf"
    conf.mkdir()
    for app, (sid, name, version, port) in zip(apps, INSTANCES, strict=True):
        (conf / f"{sid}.hcl").write_text(service_hcl(host, sid, name, version, port, app.port))
    (conf / "front.hcl").write_text(FRONT.format(host=host, front_port=FRONT_PORT, upstream_port=UPSTREAM_PORT))
    agent = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "traffic",
                                          "-config-dir", str(conf)], workdir=tmp).start()
    api = httpx.Client(base_url=agent.http_addr, timeout=10)
    through = httpx.Client(base_url=f"http://{host}:{UPSTREAM_PORT}", timeout=5)
    try:
        for entry in ({"Kind": "service-defaults", "Name": "web", "Protocol": "http"},
                      {"Kind": "service-defaults", "Name": "admin", "Protocol": "http"},
                      {"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1", "Subsets": {
                          "v1": {"Filter": "Service.Meta.version == v1"},
                          "v2": {"Filter": "Service.Meta.version == v2"}}}):
            write(api, entry)
        yield agent, api, through
    finally:
        through.close()
        api.close()
        agent.stop()
        for app in apps:
            app.close()


def write(api: httpx.Client, entry: dict[str, Any]) -> None:
    resp = api.put("/v1/config", json=entry)
    assert resp.status_code == 200, resp.text


def upstream_of(api: httpx.Client) -> dict[str, Any]:
    resp = api.get("/v1/agent/connect/proxy/front-sidecar-proxy")
    assert resp.status_code == 200, resp.text
    (up,) = resp.json()["upstreams"]
    return dict(up)


def who(through: httpx.Client, path: str = "/", **headers: str) -> str:
    resp = through.get(path, headers=headers)
    assert resp.status_code == 200, (resp.status_code, resp.text)
    return resp.text


def many(through: httpx.Client, n: int) -> Counter[str]:
    """Who answered `n` GET / over one keep-alive connection (http.client: a third of httpx's client CPU)."""
    url = httpx.URL(str(through.base_url))
    conn = http.client.HTTPConnection(url.host, url.port, timeout=5)
    seen: Counter[str] = Counter()
    try:
        for _ in range(n):
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read().decode()
            assert resp.status == 200, (resp.status, body)
            seen[body.split()[0]] += 1
    finally:
        conn.close()
    return seen


def test_a_90_10_split_then_a_router_by_path_and_header(mesh: tuple[AgentProcess, httpx.Client, httpx.Client]
                                                       ) -> None:
    agent, api, through = mesh
    write(api, {"Kind": "service-splitter", "Name": "web", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}]})

    def split_ready() -> bool:  # the snapshot has both subsets with their passing instances
        up = upstream_of(api)
        counts = {t["id"].split(".")[0]: len(t["endpoints"]) for t in up["targets"]}
        return counts == {"v1": 2, "v2": 1}
    wait_for(split_ready, 30, what="the split in the frontend's snapshot", report=agent.log)
    wait_for(lambda: who(through).startswith("web-"), 10, what="a request through the upstream", report=agent.log)

    seen = many(through, REQUESTS)
    # Which v1 instance takes a request is the balancer's call (peak-EWMA sends a keep-alive caller's
    # requests to whichever is faster now), so only the subsets' shares are asserted.
    assert set(seen) <= {"web-1", "web-2", "web-3"} and "web-3" in seen, seen
    assert abs(seen["web-3"] / REQUESTS - 0.10) <= 0.03, seen

    write(api, {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin"}},
        {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}},
         "Destination": {"ServiceSubset": "v2"}}]})
    wait_for(lambda: len(upstream_of(api)["routes"]) == 3, 10, what="the router in the snapshot",
             report=agent.log)
    wait_for(lambda: who(through, "/admin/x") == "admin-1 /admin/x", 10, what="/admin routed to admin",
             report=agent.log)
    assert {who(through, "/y", **{"x-canary": "1"}) for _ in range(50)} == {"web-3 /y"}
    rest = Counter(who(through, "/z", **{"x-canary": "0"}).split()[0] for _ in range(200))
    assert set(rest) <= {"web-1", "web-2", "web-3"} and rest["web-1"] + rest["web-2"] >= 150, rest
