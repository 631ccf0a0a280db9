"""Issue 15's acceptance through unmodified py-consul: one real `meshagent agent -dev` on 127.0.45.N with
`acl { enabled = true default_policy = "deny" }` (no initial management token: py-consul bootstraps).

Each call is made the way an operator's script makes it (`consul.Consul(host, port, token=...)`), with and
without a token; 403 where Consul gives 403 (ACLPermissionDenied), filtered lists where Consul filters
(X-Consul-Results-Filtered-By-ACLs read with httpx, which py-consul hides). ~3 s on one agent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import consul
import httpx
import pytest

from tests.support.agents import AgentProcess
from tests.support.ports import ports_free
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

FILTERED = "X-Consul-Results-Filtered-By-ACLs"
ANON = "00000000-0000-0000-0000-000000000002"
GLOBAL_MANAGEMENT = "00000000-0000-0000-0000-000000000001"


@dataclass
class Dev:
    """The agent, its bootstrap (management) secret and what py-consul answered to the bootstrap."""

    agent: AgentProcess
    mgmt: str
    bootstrap: dict[str, Any]

    def client(self, token: str | None = None) -> consul.Consul:
        return consul.Consul(host=self.agent.host, port=8500, token=token)

    def get(self, path: str, token: str | None = None) -> httpx.Response:
        headers = {"X-Consul-Token": token} if token else {}
        return httpx.get(self.agent.http_addr + path, headers=headers, timeout=10, trust_env=False)

    def token_for(self, name: str, rules: str) -> str:
        """The SecretID of a new token holding one new policy with `rules` (made with py-consul)."""
        c = self.client(self.mgmt)
        policy = c.acl.policy.create(name, rules=rules)
        return str(c.acl.token.create(policies_id=[policy["ID"]], description=name)["SecretID"])


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    host = next((f"127.0.45.{n}" for n in range(2, 40) if ports_free(f"127.0.45.{n}")), None)
    if host is None:
        pytest.fail("no 127.0.45.N (2-39) has the agent's ports free")
    workdir = Path(tmp_path_factory.mktemp("acl-pyconsul"))
    (workdir / "acl.hcl").write_text('acl {\n  enabled = true\n  default_policy = "deny"\n}\n')
    agent = AgentProcess(host=host, workdir=workdir, args=[
        "-dev", "-client", host, "-bind", host, "-node", "acl-pyconsul", "-config-file", str(workdir / "acl.hcl")])
    agent.start()
    try:
        anon = consul.Consul(host=host, port=8500)
        # -dev writes the builtins as it becomes leader: bootstrap answers once they are in.
        boot = wait_for(lambda: anon.acl.bootstrap(), 10, 0.05, "py-consul acl.bootstrap() to succeed",
                        fatal=consul.ACLPermissionDenied)
        d = Dev(agent, str(boot["SecretID"]), boot)
        mgmt = d.client(d.mgmt)
        for name, port in (("web", 8080), ("db", 5432)):
            mgmt.agent.service.register(name, service_id=name, port=port)
        httpx.put(f"{agent.http_addr}/v1/agent/check/register", headers={"X-Consul-Token": d.mgmt}, trust_env=False,
                  json={"CheckID": "web-ttl", "Name": "web-ttl", "ServiceID": "web", "TTL": "1h"}).raise_for_status()
        mgmt.kv.put("secret/y", "hidden")
        wait_for(lambda: {"web", "db"} <= set(mgmt.catalog.services()[1]), 10, what="web and db in the catalog")
        yield d
    finally:
        agent.stop()


def test_bootstrap_once_then_refused_with_the_reset_index(dev: Dev) -> None:
    assert [p["ID"] for p in dev.bootstrap["Policies"]] == [GLOBAL_MANAGEMENT]
    assert dev.bootstrap["AccessorID"] != ANON and dev.bootstrap["SecretID"]
    with pytest.raises(consul.ACLPermissionDenied, match=r"ACL bootstrap no longer allowed \(reset index: \d+\)"):
        dev.client().acl.bootstrap()
    with pytest.raises(consul.ACLPermissionDenied):  # a management token does not reopen it either
        dev.client(dev.mgmt).acl.bootstrap()


def test_policy_crud(dev: Dev) -> None:
    c = dev.client(dev.mgmt)
    made = c.acl.policy.create("crud-policy", description="made by py-consul",
                               rules='node_prefix "" { policy = "read" }')
    assert made["Name"] == "crud-policy" and made["Description"] == "made by py-consul"
    got = c.acl.policy.read(made["ID"])
    assert got["ID"] == made["ID"] and 'node_prefix ""' in got["Rules"]
    assert made["ID"] in {p["ID"] for p in c.acl.policy.list()}
    assert c.acl.policy.delete(made["ID"]) is True
    assert made["ID"] not in {p["ID"] for p in c.acl.policy.list()}
    assert c.acl.policy.read(made["ID"]) is None  # py-consul turns the 404 into None
    assert dev.get(f"/v1/acl/policy/{made['ID']}", dev.mgmt).status_code == 404
    with pytest.raises(consul.ACLPermissionDenied):  # anonymous may not list or write policies
        dev.client().acl.policy.list()
    with pytest.raises(consul.ACLPermissionDenied):
        dev.client().acl.policy.create("nope", rules='key_prefix "" { policy = "write" }')


def test_token_crud_and_a_deleted_token_is_refused(dev: Dev) -> None:
    c = dev.client(dev.mgmt)
    policy = c.acl.policy.create("crud-token-policy", rules='key_prefix "crud/" { policy = "write" }')
    made = c.acl.token.create(policies_id=[policy["ID"]], description="crud")
    assert [p["Name"] for p in made["Policies"]] == ["crud-token-policy"]
    got = c.acl.token.read(made["AccessorID"])
    assert got["SecretID"] == made["SecretID"] and got["Description"] == "crud"
    assert made["AccessorID"] in {t["AccessorID"] for t in c.acl.token.list()}
    user = dev.client(made["SecretID"])
    assert user.kv.put("crud/a", "1") is True
    assert user.acl.token.read_self()["AccessorID"] == made["AccessorID"]
    assert c.acl.token.delete(made["AccessorID"]) is True
    assert made["AccessorID"] not in {t["AccessorID"] for t in c.acl.token.list()}
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        user.kv.put("crud/a", "2")
    c.acl.policy.delete(policy["ID"])


def test_anonymous_is_refused_where_consul_refuses(dev: Dev) -> None:
    anon = dev.client()
    refusals = {
        "agent.self": lambda: anon.agent.self(),  # py-consul sends no token here: anonymous either way
        "agent.service.register": lambda: anon.agent.service.register("evil", port=1),
        "agent.check.register": lambda: anon.agent.check.register("evil", consul.Check.ttl("10s")),
        "catalog.register": lambda: anon.catalog.register("n9", "10.0.0.9"),
        "catalog.deregister": lambda: anon.catalog.deregister("acl-pyconsul", service_id="web"),
        "kv.get": lambda: anon.kv.get("secret/y"),
        "kv.put": lambda: anon.kv.put("secret/x", "v"),
        "kv.delete": lambda: anon.kv.delete("secret/y"),
        "acl.token.list": lambda: anon.acl.token.list(),
        "operator.keyring_list": lambda: anon.operator.keyring_list(),
        "snapshot.save": lambda: anon.snapshot.save(),
    }
    passed = []
    for name, call in refusals.items():
        try:
            call()
        except consul.ACLPermissionDenied as exc:
            assert "Permission denied" in str(exc) or "ACL not found" in str(exc), (name, str(exc))
        else:
            passed.append(name)
    assert passed == [], f"answered to the anonymous token under default deny: {passed}"
    assert anon.catalog.datacenters() == ["dc1"]  # not ACL-protected in Consul
    assert anon.status.leader()


def test_anonymous_lists_are_filtered_with_the_header(dev: Dev) -> None:
    anon = dev.client()
    assert anon.catalog.services()[1] == {}
    assert anon.catalog.nodes()[1] == []
    assert anon.catalog.service("web")[1] == []
    assert anon.health.service("web")[1] == []
    assert anon.agent.services() == {}
    assert anon.agent.members() == []
    assert anon.agent.checks() == {}
    assert anon.health.checks("web")[1] == []
    assert anon.health.state("any")[1] == []
    reads_nothing = dev.token_for("reads-nothing", 'key_prefix "zzz/" { policy = "read" }')
    for path in ("/v1/catalog/services", "/v1/catalog/nodes", "/v1/catalog/service/web", "/v1/health/service/web",
                 "/v1/agent/services", "/v1/agent/members", "/v1/agent/checks", "/v1/health/checks/web",
                 "/v1/health/state/any"):
        # No token at all: filtered, but not told so (Consul's maskResultsFilteredByACLs): an anonymous
        # caller cannot probe for what exists. A token that reads none of it is told.
        resp = dev.get(path)
        assert resp.status_code == 200 and FILTERED not in resp.headers, (path, resp.status_code, resp.headers)
        weak = dev.get(path, reads_nothing)
        assert weak.status_code == 200 and weak.headers.get(FILTERED) == "true", (path, weak.headers)
        again = dev.get(path, dev.mgmt)  # the same read by management: everything, no header
        assert again.status_code == 200 and FILTERED not in again.headers and again.json(), path


def test_management_sees_everything(dev: Dev) -> None:
    c = dev.client(dev.mgmt)
    assert {"web", "db"} <= set(c.catalog.services()[1])
    assert {s["Service"] for s in c.agent.services().values()} >= {"web", "db"}
    # py-consul's agent.self() sends no token (so real Consul refuses it too): asked with the header.
    assert dev.get("/v1/agent/self", dev.mgmt).json()["Config"]["NodeName"] == "acl-pyconsul"
    assert dev.get("/v1/agent/self").status_code == 403
    assert [m["Name"] for m in dev.get("/v1/agent/members", dev.mgmt).json()] == ["acl-pyconsul"]  # no token arg
    assert c.kv.get("secret/y")[1]["Value"] == b"hidden"
    assert isinstance(c.snapshot.save(), bytes)


def test_service_write_token_gets_webs_leaf_and_not_dbs(dev: Dev) -> None:
    web = dev.client(dev.token_for("web-writer", 'service "web" { policy = "write" }'))
    leaf = web.agent.connect.ca.leaf("web")
    assert leaf["Service"] == "web" and "BEGIN CERTIFICATE" in leaf["CertPEM"]
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'service:write' on \"db\""):
        web.agent.connect.ca.leaf("db")
    with pytest.raises(consul.ACLPermissionDenied):
        dev.client().agent.connect.ca.leaf("web")
    # It reads web (its write rule) and nothing else: db is filtered out of the catalog.
    assert set(web.catalog.services()[1]) == {"web"}
    assert dev.get("/v1/catalog/services", web.token).headers.get(FILTERED) == "true"
    assert web.agent.service.register("web", service_id="web-2", port=8081) is True
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.service.register("db", service_id="db-2", port=5433)


def test_key_prefix_token_writes_app_and_nothing_else(dev: Dev) -> None:
    token = dev.token_for("app-writer", 'key_prefix "app/" { policy = "write" }')
    app = dev.client(token)
    assert app.kv.put("app/x", "1") is True
    assert app.kv.get("app/x")[1]["Value"] == b"1"
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:write' on \"secret/x\""):
        app.kv.put("secret/x", "1")
    with pytest.raises(consul.ACLPermissionDenied):
        app.kv.get("secret/y")
    refused = {
        "keyring": lambda: app.operator.keyring_list(),
        "snapshot": lambda: app.snapshot.save(),
        "acl tokens": lambda: app.acl.token.list(),
        "acl policies": lambda: app.acl.policy.list(),
        "acl token create": lambda: app.acl.token.create(description="escalate"),
        "acl bootstrap": lambda: app.acl.bootstrap(),
    }
    answered = []
    for name, call in refused.items():
        try:
            call()
        except consul.ACLPermissionDenied:
            pass
        else:
            answered.append(name)
    assert answered == [], f"the key_prefix \"app/\" token was answered by: {answered}"
    for path in ("/v1/operator/keyring", "/v1/snapshot", "/v1/acl/tokens"):
        assert dev.get(path, token).status_code == 403, path


def test_recursive_kv_read_filters_by_key_read(dev: Dev) -> None:
    """Consul (acl.enable_key_list_policy = false, its default) filters a recursive read by key:read
    rather than refusing it, and sets the header; nothing readable is a 404."""
    token = dev.token_for("app-reader", 'key_prefix "app/" { policy = "write" }')
    dev.client(dev.mgmt).kv.put("app/listed", "1")
    _, rows = dev.client(token).kv.get("", recurse=True)
    keys_seen = {r["Key"] for r in rows or []}
    assert "app/listed" in keys_seen and all(k.startswith("app/") for k in keys_seen), keys_seen
    assert dev.get("/v1/kv/?recurse", token).headers.get(FILTERED) == "true"
    _, keys = dev.client(token).kv.get("", keys=True)
    assert keys and all(k.startswith("app/") for k in keys)
    assert dev.get("/v1/kv/?recurse").status_code == 404


def test_pyconsul_check_register_with_service_id(dev: Dev) -> None:
    c = dev.client(dev.mgmt)
    assert c.agent.check.register("db-ttl", consul.Check.ttl("1h"), service_id="db") is True
