"""Client agents never receive the CA's private keys: the feed's snapshots and commands are redacted, and a
replica applies them to the same state minus the keys."""

from __future__ import annotations

import msgpack
from meshagent.agent.catalog import Catalog, commands
from meshagent.agent.catalog.connect_state import redacted_command
from meshagent.agent.connect.ca import new_root
from meshagent.agent.rpc.framing import FrameReader
from meshagent.agent.server.feed import CatalogFeed
from meshagent.agent.store import CatalogStore

from tests.catalog.test_connect_state import NOW, TD, root_fields
from tests.support.feed_sink import Sink


def test_feed_sends_no_private_key_and_the_replica_matches_but_for_keys() -> None:
    root, second = new_root(TD, NOW), new_root(TD, NOW)
    init = commands.connect_ca("init", cluster_id="c1", trust_domain=TD, root=root_fields(root),
                               config={"Provider": "consul", "Config": {"PrivateKey": root.private_key}})
    rotate = commands.connect_ca("rotate", root=root_fields(second), rotated_at=NOW.timestamp())
    store = CatalogStore()
    feed = CatalogFeed(store, lambda: (True, 0))
    sink = Sink()
    store.catalog.apply(1, init)
    feed.subscribe(sink, "client")  # a snapshot with the init in it
    data = msgpack.packb(rotate, use_bin_type=True)
    store.catalog.apply(2, rotate)
    feed.publish(2, data, rotate)
    feed.publish(3, msgpack.packb({"op": "restore", "state": store.catalog.snapshot()}),
                 {"op": "restore", "state": b"..."})
    wire = b"".join(sink.frames)
    assert b"PRIVATE KEY" not in wire
    assert len(sink.frames) == 2  # the restore's own bytes are never sent
    # The replica, as a client agent builds it from those frames.
    snap, cmd = FrameReader().feed(b"".join(sink.frames))
    assert snap[0] == "snap" and cmd[0] == "cmd"
    replica = Catalog.restore(snap[2])
    replica.apply(cmd[1], msgpack.unpackb(cmd[2], raw=False))
    assert {r.id for r in replica.connect.roots.values()} == {root.id, second.id}
    assert all(r.private_key == "" for r in replica.connect.roots.values())
    assert replica.connect.active_root is not None and replica.connect.active_root.id == second.id
    assert replica.connect.trust_domain == TD
    assert "PrivateKey" not in replica.connect.config.get("Config", {})


def test_a_replica_applies_redacted_commands() -> None:
    root = new_root(TD, NOW)
    init = commands.connect_ca("init", cluster_id="c1", trust_domain=TD, root=root_fields(root))
    replica = Catalog()
    replica.apply(1, redacted_command(init))
    active = replica.connect.active_root
    assert active is not None and active.private_key == "" and active.root_cert == root.root_cert
