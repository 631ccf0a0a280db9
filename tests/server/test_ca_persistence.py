"""The mesh CA, config entries and intentions on disk (issue 13): real `meshagent agent` processes, 3 servers
and a client on loopback addresses (tests/support/cluster_hosts.py's 127.18.K.N hosts, a free K per run).

A leaf verifies with Debian openssl and Python ssl and names exactly its SPIFFE ID; no server's Raft log or
snapshot holds its private key (the search first proves it can see keys there: the CA's own root key, which
the FSM keeps by design); the state survives a full-cluster restart; `snapshot save` and `snapshot restore`
carry the roots, entries and intentions into a fresh cluster, which then signs with the same root.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshagent.agent.connect.ca import new_root

from tests.support.cluster_hosts import Cluster, Host
from tests.support.mesh import (
    active_root,
    bundle,
    connect_hcl,
    entries,
    find_key_material,
    intentions,
    leader,
    leaf,
    openssl_verify,
    private_keys_in,
    public_numbers,
    put_entry,
    put_intention,
    roots,
    service_uri,
    split_pem,
    ssl_handshake,
    uri_sans,
    wait_ca,
    write_extra_config,
)

# Loopback hosts on purpose (no namespaces needed here): the harness's fallback warning is expected.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::tests.support.cluster_hosts.ClusterWarning")]

SNAPSHOT_THRESHOLD = 64  # so that every server writes Raft snapshots within the test
ENTRIES = [
    {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}},
    {"Kind": "service-defaults", "Name": "billing", "Protocol": "http"},
    {"Kind": "service-resolver", "Name": "billing", "DefaultSubset": "v1",
     "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}},
    {"Kind": "service-intentions", "Name": "billing", "Sources": [{"Name": "web", "Action": "allow"}]},
]


def _cluster(root: Path, servers: int, clients: int) -> Cluster:
    c = Cluster(root, servers=servers, clients=clients, isolate=False)
    try:
        write_extra_config(c, "connect.hcl", connect_hcl("1s"))
        write_extra_config(c, "raft.hcl", f"raft_snapshot_threshold = {SNAPSHOT_THRESHOLD}\n", servers_only=True)
        c.start(timeout=90)
        wait_ca(c, timeout=60)
    except BaseException:
        c.stop()
        raise
    return c


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = _cluster(tmp_path_factory.mktemp("capersist"), 3, 1)
    try:
        yield c
    finally:
        c.stop()


def _state(host: Host) -> tuple[Any, ...]:
    """The CA's identity and bundle, the entries of every kind written here (without indexes), the intentions."""
    r = roots(host)
    kinds = sorted({e["Kind"] for e in ENTRIES})
    return (r["ActiveRootID"], r["TrustDomain"], tuple(bundle(r)),
            {k: {n: {f: v for f, v in e.items() if f not in ("CreateIndex", "ModifyIndex")}
                 for n, e in entries(host, k).items()} for k in kinds},
            intentions(host))


def _write_state(client: Host) -> None:
    for entry in ENTRIES:
        put_entry(client, entry)
    put_intention(client, "*", "billing", "deny")


def _agreed_state(cluster: Cluster) -> tuple[Any, ...]:
    """The state once every running agent holds the same."""
    def agreed() -> tuple[Any, ...] | None:
        states = [_state(h) for h in cluster.running()]
        return states[0] if all(s == states[0] for s in states) else None
    return cluster.wait_until(agreed, 60, "every agent to hold the same state")


def _check_signs(host: Host, service: str, expected_roots: dict[str, Any]) -> dict[str, Any]:
    fresh = leaf(host, service, timeout=60)
    assert uri_sans(fresh["CertPEM"]) == [service_uri(expected_roots["TrustDomain"], service)]
    verdict = openssl_verify(fresh["CertPEM"], [active_root(expected_roots)["RootCert"]],
                             split_pem(fresh["CertPEM"])[1:])
    assert verdict.ok, verdict.output
    return fresh


# ---------------------------------------------------------------------- the leaf and the servers' files


def test_leaf_verifies_with_openssl_and_python_ssl_and_names_only_its_spiffe_id(cluster: Cluster) -> None:
    client = cluster.clients[0]
    body = wait_ca(cluster)
    web = leaf(client, "web")
    td = body["TrustDomain"]
    assert web["Service"] == "web"
    assert web["ServiceURI"] == service_uri(td, "web")
    assert uri_sans(web["CertPEM"]) == [service_uri(td, "web")], "the only URI SAN is the exact SPIFFE ID"
    pem_bundle = client.http("/v1/connect/ca/roots?pem=true")
    assert isinstance(pem_bundle, str) and split_pem(pem_bundle) == [split_pem(c)[0] for c in bundle(body)]
    verdict = openssl_verify(web["CertPEM"], split_pem(pem_bundle), split_pem(web["CertPEM"])[1:],
                             purpose="sslclient")
    assert verdict.ok, verdict.output
    assert openssl_verify(web["CertPEM"], split_pem(pem_bundle), purpose="sslserver").ok
    handshake = ssl_handshake(web["CertPEM"], web["PrivateKeyPEM"], split_pem(pem_bundle))
    assert handshake.ok, handshake.output
    # Both checks can fail: a root of another CA does not verify the leaf.
    stranger = new_root(td, datetime.datetime.now(datetime.UTC)).root_cert
    assert not openssl_verify(web["CertPEM"], [stranger]).ok
    assert not ssl_handshake(web["CertPEM"], web["PrivateKeyPEM"], [stranger]).ok


def test_no_server_file_holds_a_leaf_private_key(cluster: Cluster) -> None:
    client = cluster.clients[0]
    body = wait_ca(cluster)
    keys = [leaf(client, svc)["PrivateKeyPEM"] for svc in ("web", "payments", "search")]
    for i in range(2 * SNAPSHOT_THRESHOLD):  # past the threshold: every server writes a Raft snapshot
        assert client.http_put(f"/v1/kv/persist/{i}", b"x") is True
    data_dirs = [s.data_dir for s in cluster.servers]
    cluster.wait_until(lambda: all(list(d.rglob("*.snap")) for d in data_dirs), 60,
                       "every server to write a Raft snapshot")
    for key_pem in keys:
        hits = find_key_material(data_dirs, key_pem)
        assert hits == [], f"a leaf private key is in the servers' files: {hits}"
    root_publics = {public_numbers(r["RootCert"]) for r in body["Roots"]}
    found = private_keys_in(data_dirs)
    strangers = [f for f in found if f.public not in root_publics]
    assert strangers == [], f"private keys other than the CA's root key: {[str(f.path) for f in strangers]}"
    # The search is real: it finds the CA's root key (kept in the FSM by design) in each server's
    # Raft log and in its snapshots.
    active_public = public_numbers(active_root(body)["RootCert"])
    for server in cluster.servers:
        mine = [f for f in found if server.data_dir in f.path.parents and f.public == active_public]
        assert any(f.path.suffix == ".snap" for f in mine), f"{server.name}: the root key not seen in a snapshot"
        assert any(f.path.suffix != ".snap" for f in mine), f"{server.name}: the root key not seen in the log"


# ---------------------------------------------------------------------- restart, snapshot save/restore


def test_ca_entries_and_intentions_survive_a_full_cluster_restart(cluster: Cluster) -> None:
    _write_state(cluster.clients[0])
    before = _agreed_state(cluster)
    assert ("*", "billing", "deny") in before[4] and ("web", "billing", "allow") in before[4]
    for host in cluster.hosts:
        host.kill()
    cluster.start(timeout=90)
    leader(cluster)
    after = _agreed_state(cluster)
    assert after == before
    body = wait_ca(cluster)
    assert body["ActiveRootID"] == before[0]
    _check_signs(cluster.clients[0], "after-restart", body)


def test_snapshot_save_and_restore_carry_the_ca_entries_and_intentions_into_a_fresh_cluster(
        cluster: Cluster, tmp_path: Path) -> None:
    _write_state(cluster.clients[0])
    saved_state = _agreed_state(cluster)
    saved_roots = wait_ca(cluster)
    archive = tmp_path / "mesh.snap"
    out = cluster.servers[0].exec(["meshagent", "snapshot", "save", str(archive)])
    assert out.returncode == 0, out.stderr
    fresh = _cluster(tmp_path / "fresh", 1, 0)
    try:
        server = fresh.servers[0]
        own = wait_ca(fresh)
        assert own["ActiveRootID"] != saved_roots["ActiveRootID"], "a fresh cluster makes its own CA"
        out = server.exec(["meshagent", "snapshot", "restore", str(archive)])
        assert out.returncode == 0, out.stderr
        fresh.wait_until(lambda: roots(server)["ActiveRootID"] == saved_roots["ActiveRootID"], 30,
                         "the restored roots")
        assert _state(server) == saved_state
        # The restored cluster signs with the restored root (its key came with the snapshot).
        restored = wait_ca(fresh)
        assert restored["ActiveRootID"] == saved_roots["ActiveRootID"]
        _check_signs(server, "after-restore", saved_roots)
    finally:
        fresh.stop()
