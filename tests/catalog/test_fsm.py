"""The catalog FSM: committed entries (single, batch, restore) to catalog indexes, outcomes and feed frames."""

from __future__ import annotations

import msgpack
from meshagent.agent.catalog.commands import deregister, kv_cas, kv_set
from meshagent.agent.rpc.errors import Rejected, ServerError
from meshagent.agent.server.feed import CatalogFeed
from meshagent.agent.server.fsm import CatalogFSM, batch_command, restorable, restore_command
from meshagent.agent.store import CatalogStore
from meshagent.raft.entry import COMMAND, NOOP, Entry


def _packed(command: dict[str, object]) -> bytes:
    return msgpack.packb(command, use_bin_type=True)


class _Sub:
    """A feed subscriber that keeps the frames it is sent."""

    def __init__(self) -> None:
        self.frames: list[object] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(msgpack.unpackb(frame[4:], raw=False))

    def backlog(self) -> int:
        return 0

    def abort(self) -> None:
        raise AssertionError("never aborted here")


def _fsm() -> tuple[CatalogFSM, _Sub]:
    store = CatalogStore()
    feed = CatalogFeed(store, lambda: (True, 0))
    sub = _Sub()
    feed.subscribe(sub, "client-1")
    return CatalogFSM(store, feed), sub


def test_a_batch_gives_each_command_its_own_index_outcome_and_feed_frame() -> None:
    fsm, sub = _fsm()
    assert fsm.apply(Entry(1, 1, NOOP, b"")) == [] and fsm.index == 1
    writes = [_packed(kv_set("a", b"1")), _packed(kv_cas("a", b"2", 99)), _packed(deregister("nobody", "x"))]
    outcomes = fsm.apply(Entry(2, 1, COMMAND, batch_command(writes)))
    assert outcomes == [(True, None), (False, None), (True, None)]  # a failed cas is a result, not an error
    catalog = fsm.store.catalog
    assert catalog.kv_get("a").modify_index == 2 and catalog.last_index == 4  # indexes 2, 3, 4
    assert [f[:2] for f in sub.frames[1:]] == [["cmd", 2], ["cmd", 3], ["cmd", 4]]
    assert fsm.index == 2 and fsm.commands_applied == 3
    # The next entry's commands continue above the catalog's index, never below it.
    fsm.apply(Entry(3, 1, COMMAND, _packed(kv_set("b", b"x"))))
    assert catalog.kv_get("b").modify_index == 5


def test_undecodable_and_refused_commands_fail_with_their_types() -> None:
    fsm, _ = _fsm()
    ((result, error),) = fsm.apply(Entry(1, 1, COMMAND, b"\xc1"))
    assert result is None and type(error) is ServerError and "undecodable" in str(error)
    ((result, error),) = fsm.apply(Entry(2, 1, COMMAND, _packed({"op": "nonsense"})))
    assert result is None and type(error) is Rejected and error.status == 400


def test_restore_through_the_log_and_snapshot_install_replace_the_catalog() -> None:
    source, _ = _fsm()
    source.apply(Entry(1, 1, COMMAND, _packed(kv_set("k", b"v"))))
    snap = source.snapshot()
    assert restorable(snap) and not restorable(b"junk")
    fsm, sub = _fsm()
    ((result, error),) = fsm.apply(Entry(7, 2, COMMAND, _packed(restore_command(snap))))
    assert (result, error) == (True, None)
    assert fsm.store.catalog.kv_get("k").value == b"v" and fsm.store.catalog.last_index >= 7
    assert sub.frames[-2][0] == "snap"  # the feed sends the whole new catalog (then the command, skipped)
    other, _ = _fsm()
    other.install(9, snap)
    assert other.index == 9 and other.store.catalog.kv_get("k").value == b"v"
