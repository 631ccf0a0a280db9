"""Issue 13's acceptance on a VM fleet: 3 servers and 2 clients, one per network namespace, real processes.

The mesh control plane end to end: an intention written on one agent changes `POST /v1/agent/connect/authorize`
on every agent within 1 s; a client keeps serving its roots and leaf with every server stopped; the CA,
config entries and intentions survive a leader kill; a root rotation keeps old leaves valid, chains new
leaves to the old root through the cross-signed intermediate, and drops the old root after 2 x leaf TTL.
Every wait is on a condition with a deadline; the 1 s bound is the issue's figure.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from meshagent.agent.connect.ca import new_root

from tests.support.cluster_hosts import Cluster, Host
from tests.support.mesh import (
    active_root,
    authorize,
    bundle,
    connect_hcl,
    entries,
    intentions,
    intermediates,
    leader,
    leaf,
    openssl_verify,
    put_entry,
    put_intention,
    roots,
    service_uri,
    split_pem,
    uri_sans,
    wait_ca,
    write_extra_config,
)

pytestmark = pytest.mark.slow

PROPAGATION_BOUND = 1.0  # the issue: authorize reflects a change within 1 s on every agent
SHORT_LEAF_TTL = 10.0  # seconds, for the rotation test (connect.test_min_leaf_ttl lowers the 1 h minimum)
PRUNE_TICK = SHORT_LEAF_TTL / 2  # the leader looks for roots to prune every min(leaf TTL / 2, 60 s)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("meshcp"), servers=3, clients=2)
    try:
        write_extra_config(c, "connect.hcl", connect_hcl("1s"))
        c.start(timeout=90)
        wait_ca(c, timeout=60)
        yield c
    finally:
        c.stop()


# ---------------------------------------------------------------------- intentions → authorize


def _watch_decisions(hosts: list[Host], target: str, uri: str, expected: bool,
                     deadline: float) -> tuple[threading.Event, dict[str, float], list[str], list[threading.Thread]]:
    """One polling thread per agent (each on its own keep-alive connection): each records the moment its
    agent first answers `expected`. Polling starts once every thread has seen the old decision."""
    ready = threading.Barrier(len(hosts) + 1)
    go = threading.Event()
    seen: dict[str, float] = {}
    errors: list[str] = []

    def poll(host: Host) -> None:
        body = {"Target": target, "ClientCertURI": uri, "ClientCertSerial": "01"}
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            url = host.http_addr + "/v1/agent/connect/authorize"
            try:
                first = client.post(url, json=body).json()["Authorized"]
                if first == expected:
                    errors.append(f"{host.name} already answered {expected} before the write")
            except Exception as exc:
                errors.append(f"{host.name}: {exc!r}")
            ready.wait(30)
            go.wait(30)
            while time.monotonic() < deadline:
                try:
                    got = client.post(url, json=body).json()
                except Exception as exc:
                    errors.append(f"{host.name}: {exc!r}")
                    time.sleep(0.01)
                    continue
                if got.get("Authorized") is expected:
                    seen[host.name] = time.monotonic()
                    return
                time.sleep(0.005)

    threads = [threading.Thread(target=poll, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    ready.wait(30)
    return go, seen, errors, threads


def _change_and_measure(cluster: Cluster, write: object, expected: bool, what: str,
                        trust_domain: str) -> float:
    hosts = cluster.running()
    uri = service_uri(trust_domain, "web")
    go, seen, errors, threads = _watch_decisions(hosts, "db", uri, expected, time.monotonic() + 40)
    t0 = time.monotonic()
    go.set()
    write()  # type: ignore[operator]
    acked = time.monotonic() - t0
    for t in threads:
        t.join(15)
    assert not [e for e in errors if "already answered" in e], errors
    missing = [h.name for h in hosts if h.name not in seen]
    assert not missing, f"{what}: {missing} never answered Authorized={expected}: {errors[:5]}\n{cluster.report()}"
    delays = {name: at - t0 for name, at in seen.items()}
    worst = max(delays.values())
    print(f"\n{what}: write acknowledged after {acked * 1000:.0f} ms; authorize changed on every agent "
          f"within {worst * 1000:.0f} ms: " + ", ".join(f"{n} {d * 1000:.0f} ms" for n, d in sorted(delays.items())))
    assert worst <= PROPAGATION_BOUND, f"{what}: authorize changed after {delays} (bound {PROPAGATION_BOUND} s)"
    return worst


def test_authorize_reflects_an_intention_change_within_1s_on_every_agent(cluster: Cluster) -> None:
    td = wait_ca(cluster)["TrustDomain"]
    web = service_uri(td, "web")
    for h in cluster.running():  # nothing matches yet: the default (allow) decides
        assert authorize(h, "db", web)["Authorized"] is True, h.name
    follower = next(s for s in cluster.servers if s is not leader(cluster))
    deny = {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Action": "deny"}]}
    worst = [
        _change_and_measure(cluster, lambda: put_entry(cluster.clients[0], deny), False,
                            "deny web => db (PUT /v1/config on a client)", td),
        _change_and_measure(cluster, lambda: put_intention(follower, "web", "db", "allow"), True,
                            "allow web => db (PUT /v1/connect/intentions/exact on a follower)", td),
        _change_and_measure(cluster, lambda: put_entry(cluster.clients[1], deny), False,
                            "flip allow => deny (PUT /v1/config on the other client)", td),
    ]
    print(f"max over the three changes: {max(worst) * 1000:.0f} ms")
    for h in cluster.running():  # another source is not affected: the default still allows it
        assert authorize(h, "db", service_uri(td, "api"))["Authorized"] is True, h.name


# ---------------------------------------------------------------------- servers stopped


def test_a_client_serves_roots_and_its_leaf_with_every_server_stopped(cluster: Cluster) -> None:
    client = cluster.clients[1]
    before_roots = wait_ca(cluster)
    before_leaf = leaf(client, "web")
    assert openssl_verify(before_leaf["CertPEM"], bundle(before_roots), split_pem(before_leaf["CertPEM"])[1:]).ok
    for s in cluster.servers:
        s.kill()
    try:
        cached = roots(client, agent=True)
        assert cached["ActiveRootID"] == before_roots["ActiveRootID"]
        assert cached["TrustDomain"] == before_roots["TrustDomain"]
        assert bundle(cached) == bundle(before_roots)
        again = leaf(client, "web", timeout=10)
        assert again["SerialNumber"] == before_leaf["SerialNumber"]
        assert again["CertPEM"] == before_leaf["CertPEM"]
        assert again["PrivateKeyPEM"] == before_leaf["PrivateKeyPEM"]
        # The decision needs no server either (the agent's cached intentions).
        authorize(client, "db", service_uri(before_roots["TrustDomain"], "web"))
    finally:
        for s in cluster.servers:
            s.start(wait=False)
    for s in cluster.servers:
        s.wait_ready(60)
    leader(cluster)
    cluster.wait_until(lambda: client.http_put("/v1/kv/mesh-back", b"1") is True, 60,
                       "a write through the client once the servers are back")
    assert wait_ca(cluster)["ActiveRootID"] == before_roots["ActiveRootID"]


# ---------------------------------------------------------------------- leader kill

ENTRIES = [
    {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}},
    {"Kind": "service-defaults", "Name": "api", "Protocol": "http"},
    {"Kind": "service-intentions", "Name": "api",
     "Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}]},
]


def _state(host: Host) -> tuple[object, ...]:
    """What must survive: the CA's identity, the entries of each kind written here, the intentions."""
    r = roots(host)
    kinds = {e["Kind"] for e in ENTRIES}
    return (r["ActiveRootID"], r["TrustDomain"], tuple(bundle(r)),
            {k: {n: {f: v for f, v in e.items() if f not in ("CreateIndex", "ModifyIndex")}
                 for n, e in entries(host, k).items()} for k in sorted(kinds)},
            intentions(host))


def test_ca_entries_and_intentions_survive_a_leader_kill(cluster: Cluster) -> None:
    client = cluster.clients[0]
    for entry in ENTRIES:
        put_entry(client, entry)
    wait_ca(cluster)
    before = cluster.wait_until(lambda: _state(client) if all(_state(h) == _state(client) for h in cluster.running())
                                else None, 30, "every agent to hold the entries")
    assert before[4] >= {("web", "api", "allow"), ("*", "api", "deny")}
    old = leader(cluster)
    old.kill()
    try:
        new = leader(cluster, exclude=old)
        assert new is not old
        after = roots(new)
        assert (after["ActiveRootID"], after["TrustDomain"]) == before[:2], "the new leader has another CA"
        # A CSR the new leader must sign (a service no agent asked for before).
        fresh = leaf(cluster.clients[1], "after-failover", timeout=60)
        assert uri_sans(fresh["CertPEM"]) == [service_uri(after["TrustDomain"], "after-failover")]
        verdict = openssl_verify(fresh["CertPEM"], bundle(after), split_pem(fresh["CertPEM"])[1:])
        assert verdict.ok, verdict.output
        for h in cluster.running():
            assert _state(h) == before, f"{h.name} lost state after the leader kill"
        td = after["TrustDomain"]
        assert authorize(client, "api", service_uri(td, "web"))["Authorized"] is True
        assert authorize(client, "api", service_uri(td, "other"))["Authorized"] is False
    finally:
        old.start()
    cluster.wait_until(lambda: _state(old) == before, 60, f"{old.name} to catch up after its restart")


# ---------------------------------------------------------------------- rotation


def _set_config(host: Host, config: dict[str, object]) -> None:
    """PUT /v1/connect/ca/configuration (raises unless 2xx)."""
    host.http_put("/v1/connect/ca/configuration", {"Provider": "consul", "Config": config}, timeout=30)


def test_rotation_keeps_old_leaves_chains_new_ones_to_the_old_root_and_prunes_it(cluster: Cluster) -> None:
    client = cluster.clients[0]
    old_roots = wait_ca(cluster)
    td, old_root = old_roots["TrustDomain"], active_root(old_roots)
    before = leaf(client, "web")
    assert openssl_verify(before["CertPEM"], [old_root["RootCert"]], split_pem(before["CertPEM"])[1:]).ok
    _set_config(cluster.servers[1], {"LeafCertTTL": f"{SHORT_LEAF_TTL:g}s"})
    supplied = new_root(td, datetime.datetime.now(datetime.UTC))
    _set_config(cluster.servers[2], {"LeafCertTTL": f"{SHORT_LEAF_TTL:g}s", "PrivateKey": supplied.private_key,
                                     "RootCert": supplied.root_cert})
    rotated_at = time.monotonic()
    new_roots = cluster.wait_until(lambda: (r := roots(client, agent=True))["ActiveRootID"] == supplied.id and r,
                                   30, "the client to see the supplied root active")
    assert new_roots["TrustDomain"] == td
    assert {r["ID"] for r in new_roots["Roots"]} == {old_root["ID"], supplied.id}, "both roots in the bundle"

    # A leaf issued before the rotation verifies against the new bundle.
    verdict = openssl_verify(before["CertPEM"], bundle(new_roots), intermediates(new_roots))
    assert verdict.ok, verdict.output

    # A leaf issued after it verifies against the new root, and against only the old one through the
    # cross-signed intermediate (the leaf's chain, and the roots' IntermediateCerts).
    after = leaf(client, "web-after-rotation")
    chain = split_pem(after["CertPEM"])[1:]
    assert chain, "a leaf issued after the rotation carries the cross-signed intermediate"
    assert openssl_verify(after["CertPEM"], [supplied.root_cert]).ok
    only_new = openssl_verify(after["CertPEM"], [old_root["RootCert"]])
    assert not only_new.ok, "without the intermediate the old root must not verify the new leaf (a real check)"
    for untrusted in (chain, intermediates(new_roots)):
        verdict = openssl_verify(after["CertPEM"], [old_root["RootCert"]], untrusted)
        assert verdict.ok, verdict.output

    # The old root stays until it has been inactive for 2 x leaf TTL, then leaves every agent's bundle.
    bound = 2 * SHORT_LEAF_TTL
    # The leader prunes on a timer of min(TTL / 2, 60 s) that follows the current TTL, so the old root leaves
    # at most one tick after 2 x TTL (plus the feed and the poll).
    gone_at = cluster.wait_until(
        lambda: time.monotonic() if all(old_root["ID"] not in {r["ID"] for r in roots(h, agent=True)["Roots"]}
                                        for h in cluster.running()) else None,
        bound + PRUNE_TICK + 10, f"the old root to leave every agent's bundle after 2 x {SHORT_LEAF_TTL:g} s",
        interval=0.2)
    waited = gone_at - rotated_at
    print(f"\nold root left every bundle {waited:.1f} s after the rotation (2 x leaf TTL = {bound:g} s)")
    assert waited >= bound - 1.0, f"the old root left after {waited:.1f} s, before 2 x leaf TTL"
    final = roots(client)
    assert [r["ID"] for r in final["Roots"]] == [supplied.id]

    # A key type change rotates too: the servers make a P-384 root, cross-signed by the supplied one.
    _set_config(cluster.servers[0], {"LeafCertTTL": f"{SHORT_LEAF_TTL:g}s", "PrivateKeyType": "ec",
                                     "PrivateKeyBits": 384})
    third = cluster.wait_until(
        lambda: (r := roots(client, agent=True))["ActiveRootID"] not in ("", supplied.id) and r, 30,
        "a new root after the key type change")
    assert active_root(third).get("PrivateKeyBits") == 384
    newest = leaf(client, "web-after-key-change")
    verdict = openssl_verify(newest["CertPEM"], [supplied.root_cert], split_pem(newest["CertPEM"])[1:])
    assert verdict.ok, verdict.output
