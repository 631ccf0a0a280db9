"""Leaves of a rotated-out root are all replaced before the CA prunes that root, also with a short leaf TTL.

The flake this guards (issue 17, part T): a rotation that also set LeafCertTTL = 10 s pruned the old root
2 x TTL (20-25 s) later, while agents still spread their reissue over Consul's 30 s window: a quarter of the
leaves were still of the pruned root, and every peer refused them ("tls-handshake" on the server sidecar).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from meshagent.agent.connect import leaf_plan
from meshagent.agent.connect.renewal import ROOT_CHANGE_JITTER, root_change_window

from tests.support.agents import AgentProcess
from tests.support.mesh_certs import MeshCA
from tests.support.ports import ports_free
from tests.support.wait import wait_for

SERVICES = 16


def test_the_window_is_consuls_30_s_but_never_past_a_quarter_of_the_leaf_ttl() -> None:
    assert root_change_window(72 * 3600.0) == ROOT_CHANGE_JITTER
    assert root_change_window(3600.0) == ROOT_CHANGE_JITTER  # Consul's minimum TTL: unchanged
    assert root_change_window(10.0) == 2.5
    assert root_change_window(float("nan")) == ROOT_CHANGE_JITTER and root_change_window(0.0) == ROOT_CHANGE_JITTER
    for ttl in (1.0, 2.0, 6.0, 10.0, 60.0, 119.0, 3600.0):
        # The CA prunes at 2 x TTL: the whole window ends with at least 1.75 x TTL left for the signing.
        assert root_change_window(ttl) <= min(ROOT_CHANGE_JITTER, ttl / 4)


def test_a_root_change_schedules_the_reissue_within_the_window_given() -> None:
    rng = random.Random(7)
    moments = []
    for _ in range(500):
        state = leaf_plan.new_state("web", 0.0)
        leaf = leaf_plan.LeafRecord("web", "spiffe://x/ns/default/dc/dc1/svc/web", "c", (), "k", 1, 0.0,
                                    72 * 3600.0, "old", 1)
        leaf_plan.signed(state, leaf, "old", 100.0, rng)
        assert leaf_plan.root_changed(state, "new", 100.0, rng, root_change_window(10.0))
        moments.append(state.renew_at)
    assert all(100.0 <= t <= 102.5 for t in moments) and max(moments) - min(moments) > 2.0
    # A leaf that arrives signed by a root no longer active (the rotation raced the signing) too.
    state = leaf_plan.new_state("web", 0.0)
    leaf = leaf_plan.LeafRecord("web", "u", "c", (), "k", 1, 0.0, 72 * 3600.0, "old", 1)
    leaf_plan.signed(state, leaf, "new", 100.0, rng, 2.5)
    assert 100.0 <= state.renew_at <= 102.5


# ---------------------------------------------------------------------- a real -dev agent


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    host = next((f"127.0.36.{n}" for n in range(1, 40) if ports_free(f"127.0.36.{n}")), None)
    if host is None:
        pytest.fail("no free 127.0.36.N: 39 addresses all busy (a leftover agent of an earlier run?)")
    (tmp_path / "ttl.hcl").write_text('connect {\n  enabled = true\n  test_min_leaf_ttl = "1s"\n}\n')
    proc = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "prune-reissue",
                                         "-config-file", str(tmp_path / "ttl.hcl")], workdir=tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _signer(pem: str) -> str:
    """The key ID of the root (or cross-signed intermediate) that signed the leaf: its AKI."""
    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    return aki.hex(":")


@pytest.mark.slow
def test_no_leaf_of_the_old_root_outlives_its_prune_after_a_rotation_to_a_short_ttl(agent: AgentProcess) -> None:
    base = agent.http_addr
    with httpx.Client(base_url=base, timeout=10) as api:
        roots = wait_for(lambda: (r := api.get("/v1/connect/ca/roots").json()).get("ActiveRootID") and r, 20,
                         what="the CA's first root")
        (old,) = roots["Roots"]
        for i in range(SERVICES):
            assert api.put("/v1/agent/service/register", json={"Name": f"s{i}", "Port": 9000 + i}).status_code == 200
        leaf = [api.get(f"/v1/agent/connect/ca/leaf/s{i}").json()["CertPEM"] for i in range(SERVICES)]
        assert all(_signer(p).lower() == old["SigningKeyID"].lower() for p in leaf)  # 72 h leaves of the old root
        ca = MeshCA(trust_domain=roots["TrustDomain"])
        # TTL 2 s: the old root is pruned 4-5 s after the rotation; the 72 h leaves must all move before that
        # (before the fix they were spread over 30 s, and nearly every one outlived the root).
        r = api.put("/v1/connect/ca/configuration", json={"Provider": "consul", "Config": {
            "PrivateKey": ca.root.private_key, "RootCert": ca.root.root_cert, "LeafCertTTL": "2s"}})
        assert r.status_code == 200, r.text
        rotated = time.monotonic()

        def pruned() -> list[int] | None:
            # Roots read first: a leaf still of the old root read after it left the roots was presented
            # (and refused by every peer) after the prune.
            ids = {x["SigningKeyID"].lower() for x in api.get("/v1/connect/ca/roots").json()["Roots"]}
            late = [i for i in range(SERVICES) if _signer(api.get(f"/v1/agent/connect/ca/leaf/s{i}").json()[
                "CertPEM"]).lower() == old["SigningKeyID"].lower()]
            return None if old["SigningKeyID"].lower() in ids else late
        late = wait_for(lambda: (v := pruned()) is not None and (v,), 30, interval=0.05,
                        what="the old root to be pruned")[0]
        print(f"\nold root pruned {time.monotonic() - rotated:.1f} s after the rotation; leaves still of it: {late}")
        assert late == [], f"leaves {late} still signed by the pruned root"
