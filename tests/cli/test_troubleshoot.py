"""`meshagent troubleshoot upstreams` against one real `-dev` agent on 127.0.33.N: a frontend sidecar with an
http upstream `web` (two instances, Meta.version v1 and v2, behind embedded sidecars) and a tcp upstream `db`.

- flat upstreams (no chain entries): one line per endpoint, address:port, node and sidecar ID, text and JSON;
- the refusals: no such sidecar, not a connect-proxy, bad flags, the agent down (its address named);
- a hand-made snapshot with routes renders routes, splits and targets, and a target holding another
  service's identities is named as failed over (the stand-in for the chain parts);
- once the chain parts are in (agent/connect/proxy_chain.py): a 90/10 splitter, a header route and v2's
  failover to v1 read through the agent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result
from meshagent.cli.http_client import AgentClient
from meshagent.cli.main import cli
from meshagent.cli.troubleshoot_cmd import build_report, describe_match, percent, render_text, table, target_service
from meshagent.proxy import snapshot as ps

from tests.support.agents import AgentProcess, scratch_dir
from tests.support.ports import free_ports, ports_free
from tests.support.wait import wait_for

HOSTS = [f"127.0.33.{n}" for n in range(10, 40)]
CLOSED_HOST = "127.0.33.2"  # nothing listens here
TD = "11111111-2222-3333-4444-555555555555.consul"


def _start() -> AgentProcess:
    host = next(h for h in HOSTS if ports_free(h))
    args = ["-dev", "-client", host, "-bind", host, "-node", "ts-node"]
    return AgentProcess(host=host, args=args, workdir=scratch_dir()).start()


def _register(agent: AgentProcess, body: dict[str, Any]) -> None:
    resp = httpx.put(f"{agent.http_addr}/v1/agent/service/register", json=body, timeout=10)
    assert resp.status_code == 200, resp.text


def _only_alias(parent: str) -> dict[str, Any]:
    """A sidecar with only the alias check of its parent: the default listening check's first run may come
    before the worker listens, and then it stays critical for its 10 s interval."""
    return {"Checks": [{"Name": f"alias {parent}", "AliasService": parent}]}


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    proc = _start()
    try:
        web_port, db_port = free_ports(2)
        for sid, version in (("web-a", "v1"), ("web-b", "v2")):
            _register(proc, {"Name": "web", "ID": sid, "Port": 8080, "Meta": {"version": version},
                             "Check": {"CheckID": f"{sid}-ttl", "TTL": "600s", "Status": "passing"},
                             "Connect": {"SidecarService": _only_alias(sid)}})
        _register(proc, {"Name": "db", "ID": "db", "Port": 5432, "Connect": {"SidecarService": _only_alias("db")}})
        upstreams = [{"DestinationName": "web", "LocalBindPort": web_port},
                     {"DestinationName": "db", "LocalBindPort": db_port}]
        _register(proc, {"Name": "frontend", "Port": 8000,
                         "Connect": {"SidecarService": {"Proxy": {"Upstreams": upstreams}}}})
        resp = httpx.put(f"{proc.http_addr}/v1/config", timeout=10,
                         json={"Kind": "service-defaults", "Name": "web", "Protocol": "http"})
        assert resp.status_code == 200, resp.text
        yield proc
    finally:
        proc.stop()


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["troubleshoot", "upstreams", *args],
                              env={"MESH_HTTP_ADDR": "", "CONSUL_HTTP_ADDR": "", "MESH_HTTP_TOKEN": ""})


def report_of(agent: AgentProcess) -> dict[str, Any]:
    result = run("-sidecar-for", "frontend", "-format", "json", "-http-addr", agent.http_addr)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def upstream(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(u for u in report["Upstreams"] if u["DestinationName"] == name)
    return found


# ---------------------------------------------------------------------- flat upstreams


def test_flat_upstreams_list_each_endpoint(agent: AgentProcess) -> None:
    def both_web_endpoints() -> dict[str, Any] | None:
        report = report_of(agent)
        web = upstream(report, "web")
        ids = {ep["ServiceID"] for ep in web.get("Endpoints", ())}
        if "Routes" in web or ids != {"web-a-sidecar-proxy", "web-b-sidecar-proxy"}:
            return None  # the sidecars' listening checks have not passed yet
        return report if upstream(report, "db")["Endpoints"] else None

    report = wait_for(both_web_endpoints, 20, what="web's two sidecars and db's in the frontend's snapshot")
    assert report["ProxyID"] == "frontend-sidecar-proxy" and report["Service"] == "frontend"
    db = upstream(report, "db")
    assert db["Protocol"] == "tcp" and db["EndpointsOf"] == ""
    [ep] = db["Endpoints"]
    assert ep["Address"] == agent.host and ep["Node"] == "ts-node" and ep["ServiceID"] == "db-sidecar-proxy"
    assert 21000 <= ep["Port"] <= 21255

    result = run("-proxy-id", "frontend-sidecar-proxy", "-http-addr", agent.http_addr)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "PRIVATE KEY" not in text  # the snapshot carries the sidecar's key: never printed
    assert f"Upstream db (tcp) on 127.0.0.1:{db['LocalBindPort']}: 1 endpoint" in text
    assert f"{agent.host}:{ep['Port']}  ts-node  db-sidecar-proxy" in text
    web = upstream(report, "web")
    for wep in web["Endpoints"]:
        assert f"{agent.host}:{wep['Port']}" in text and wep["ServiceID"] in text
    assert "\x1b[" not in text  # not a terminal: no styles


# ---------------------------------------------------------------------- refusals


def test_flags_are_checked_first() -> None:
    assert "One of -sidecar-for or -proxy-id is required" in run().output
    assert "not both" in run("-sidecar-for", "a", "-proxy-id", "b").output
    assert run("-sidecar-for", "a", "-format", "xml").exit_code == 2


def test_unknown_sidecars_and_kinds_are_named(agent: AgentProcess) -> None:
    result = run("-sidecar-for", "nope", "-http-addr", agent.http_addr)
    assert result.exit_code == 1 and "No sidecar proxy registered for nope" in result.stderr
    result = run("-proxy-id", "db", "-http-addr", agent.http_addr)
    assert result.exit_code == 1 and "'db' is not a connect-proxy" in result.stderr


def test_an_agent_that_is_down_is_named() -> None:
    addr = f"http://{CLOSED_HOST}:{free_ports(1, CLOSED_HOST)[0]}"
    result = run("-sidecar-for", "frontend", "-http-addr", addr)
    assert result.exit_code == 1
    assert f"cannot connect to the agent at {addr}" in result.stderr, result.output


# ---------------------------------------------------------------------- routes (a hand-made snapshot)


def _snapshot() -> ps.ProxySnapshot:
    eps = {"v1": (ps.Endpoint("127.0.33.200", 21001, node="n1", service_id="web-a-sidecar-proxy"),),
           "admin": (ps.Endpoint("127.0.33.201", 21002, node="n2", service_id="db-sidecar-proxy"),)}
    v1, v2, admin = ("v1.web.default.default.dc1", "v2.web.default.default.dc1", "admin.default.default.dc1")
    spiffe = f"spiffe://{TD}/ns/default/dc/dc1/svc/"
    routes = (
        ps.ChainRoute(ps.RouteMatch(path_prefix="/admin", methods=("GET", "POST")),
                      (ps.WeightedTarget(admin, 10000),), prefix_rewrite="/", request_timeout_ms=2000,
                      name="web route 0"),
        ps.ChainRoute(ps.RouteMatch(headers=(ps.HeaderMatch("x-canary", exact="1"),),
                                    query=(ps.QueryMatch("debug", present=True),)),
                      (ps.WeightedTarget(v2, 10000),), name="web route 1"),
        ps.ChainRoute(ps.RouteMatch(path_prefix="/"), (ps.WeightedTarget(v1, 9000), ps.WeightedTarget(v2, 1000)),
                      name="web default"))
    targets = (ps.ChainTarget(v1, eps["v1"], (spiffe + "web",)),
               ps.ChainTarget(v2, eps["admin"], (spiffe + "db",)),  # another service's endpoints: failover
               ps.ChainTarget(admin, ()))
    web = ps.Upstream("web", "127.0.0.1", 9191, protocol="http", routes=routes, targets=targets)
    tls = ps.TLSMaterial("cert", "PRIVATE KEY", ("root",), TD, spiffe + "frontend")
    return ps.ProxySnapshot("frontend-sidecar-proxy", "frontend", "dc1", tls, "127.0.33.200", 21000,
                            upstreams=(web,))


def test_routes_splits_and_targets_render(agent: AgentProcess) -> None:
    report = build_report(AgentClient(agent.http_addr), _snapshot())
    web = report["Upstreams"][0]
    assert [r["Match"] for r in web["Routes"]] == [
        "PathPrefix /admin, Methods GET,POST", "Header x-canary = 1, Query debug present", "PathPrefix /"]
    assert web["Routes"][0]["PrefixRewrite"] == "/" and web["Routes"][0]["RequestTimeoutMs"] == 2000
    assert web["Routes"][2]["Splits"] == [{"Target": "v1.web.default.default.dc1", "Weight": 90.0},
                                          {"Target": "v2.web.default.default.dc1", "Weight": 10.0}]
    by_id = {t["ID"]: t for t in web["Targets"]}
    assert by_id["v1.web.default.default.dc1"]["EndpointsOf"] == ""
    assert by_id["v2.web.default.default.dc1"]["EndpointsOf"] == "db"
    assert by_id["admin.default.default.dc1"]["Endpoints"] == []
    text = "\n".join(render_text(report))
    assert "Upstream web (http) on 127.0.0.1:9191: 3 routes, 3 targets" in text
    assert "90% v1.web.default.default.dc1, 10% v2.web.default.default.dc1" in text
    assert "rewrite to /; timeout 2000 ms" in text
    assert re.search(r"\n +v2\.web\.default\.default\.dc1 +127\.0\.33\.201:21002 +n2 +db-sidecar-proxy +"
                     r"failover: endpoints of db\n", text)
    assert re.search(r"\n +admin\.default\.default\.dc1 +\(no healthy endpoints\)", text)
    assert "PRIVATE" not in text and "PRIVATE" not in json.dumps(report)


def test_small_helpers() -> None:
    assert target_service("v2.web.default.default.dc1") == "web"
    assert target_service("web.default.default.dc1") == "web"
    assert [percent(w) for w in (10000, 9000, 1, 3333)] == ["100%", "90%", "0.01%", "33.33%"]
    assert describe_match(ps.RouteMatch()) == "*"
    lines = table(["A", "B"], [["x\x1b[2Jy", "z"]])  # a control character in a cell never reaches the tty
    assert [click.unstyle(line) for line in lines] == ["  A" + " " * 10 + "B", "  x\\x1b[2Jy  z"]
    assert lines[1] == "  x\\x1b[2Jy  z"
    headers = (ps.HeaderMatch("a", present=True, invert=True), ps.HeaderMatch("b", suffix="x"),
               ps.HeaderMatch("c", regex="y+"))
    match = ps.RouteMatch(path_regex="/v[0-9]+", headers=headers, query=(ps.QueryMatch("q", regex="z"),))
    assert describe_match(match) == (
        "PathRegex /v[0-9]+, Header a not present, Header b suffix x, Header c ~ y+, Query q ~ z")


# ---------------------------------------------------------------------- the chain, through the agent


def _put(agent: AgentProcess, path: str, body: dict[str, Any]) -> None:
    resp = httpx.put(f"{agent.http_addr}{path}", json=body, timeout=10)
    assert resp.status_code == 200, resp.text


def test_a_canary_chain_and_its_failover(agent: AgentProcess) -> None:
    _put(agent, "/v1/config", {"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
                               "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                                           "v2": {"Filter": "Service.Meta.version == v2"}},
                               "Failover": {"v2": {"ServiceSubset": "v1"}}})
    _put(agent, "/v1/config", {"Kind": "service-splitter", "Name": "web",
                               "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                          {"Weight": 10, "ServiceSubset": "v2"}]})
    _put(agent, "/v1/config", {"Kind": "service-router", "Name": "web", "Routes": [
        {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Exact": "1"}]}}, "Destination": {"ServiceSubset": "v2"}}]})
    v1, v2 = "v1.web.default.default.dc1", "v2.web.default.default.dc1"

    def web_targets(failed_over: bool) -> dict[str, Any] | None:
        web = upstream(report_of(agent), "web")
        targets = {t["ID"]: t for t in web.get("Targets", ())}
        if len(web.get("Routes", ())) != 2 or set(targets) != {v1, v2} or not all(
                t["Endpoints"] for t in targets.values()):
            return None  # the router (written last) has not reached the snapshot yet
        moved = targets[v2]["Endpoints"] == targets[v1]["Endpoints"]
        return web if moved == failed_over else None

    web = wait_for(lambda: web_targets(False), 20, what="web's chain in the frontend's snapshot")
    assert [r["Splits"] for r in web["Routes"]] == [[{"Target": v2, "Weight": 100.0}],
                                                    [{"Target": v1, "Weight": 90.0}, {"Target": v2, "Weight": 10.0}]]
    assert web["Routes"][0]["Match"] == "Header x-canary = 1"
    by_id = {t["ID"]: t for t in web["Targets"]}
    assert [ep["ServiceID"] for ep in by_id[v2]["Endpoints"]] == ["web-b-sidecar-proxy"]
    assert by_id[v2]["EndpointsOf"] == ""

    # v2's only instance goes critical: the agent gives v2 v1's endpoints, and the command says so.
    resp = httpx.put(f"{agent.http_addr}/v1/agent/check/fail/web-b-ttl", timeout=10)
    assert resp.status_code == 200, resp.text
    try:
        web = wait_for(lambda: web_targets(True), 20, what="v2's failover to v1 in the snapshot")
        by_id = {t["ID"]: t for t in web["Targets"]}
        assert by_id[v2]["EndpointsOf"] == v1
        text = run("-sidecar-for", "frontend", "-http-addr", agent.http_addr).stdout
        assert f"failover: endpoints of {v1}" in text
    finally:  # the module's other tests see web as they found it, whatever the order
        httpx.put(f"{agent.http_addr}/v1/agent/check/pass/web-b-ttl", timeout=10)
        for kind in ("service-router", "service-splitter", "service-resolver"):
            httpx.delete(f"{agent.http_addr}/v1/config/{kind}/web", timeout=10)
