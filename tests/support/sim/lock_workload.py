"""The Raft simulator's lock workload: the real catalog FSM as the replicated state machine, clients that
acquire, release and read KV locks with one session each (checked by tests/support/lock_linearizability.py).

Every replica starts from the same catalog (a node and one session per client, no checks, no lock-delay) and
applies each committed command at its own next catalog index, so replicas, snapshots and restores agree.
"""

from __future__ import annotations

import random
from typing import Any

from meshagent.agent.catalog import Catalog, Node, commands

from tests.support.lock_linearizability import LockOp

NODE = "sim-node"
KINDS = ("acquire", "acquire", "release", "get", "get")
NOW = 1_700_000_000.0  # lock-delay never applies here (no session is destroyed): any fixed `now` will do


def session_id(client: str) -> str:
    """The fixed session UUID of a client (c0 -> 00000000-0000-4000-8000-000000000000)."""
    number = int(client[1:]) if client[1:].isdigit() else abs(hash(client)) % 10**8
    return f"{number:08x}-0000-4000-8000-000000000000"


class LockMachine:
    """The catalog FSM behind the simulator's `kv` interface (apply, read, snapshot, restore)."""

    def __init__(self, clients: list[str], catalog: Catalog | None = None) -> None:
        self.clients = clients
        if catalog is None:
            catalog = Catalog()
            catalog.apply(1, commands.register(Node(node=NODE, address="127.0.0.1")))
            for i, client in enumerate(clients):
                catalog.apply(2 + i, commands.session_create({"id": session_id(client), "node": NODE,
                                                              "node_checks": [], "lock_delay": 0}))
        self.cat = catalog

    def apply(self, command: dict[str, Any]) -> Any:
        key, value, sid = command["key"], command["value"].encode(), command["session"]
        cmd = (commands.kv_lock(key, value, sid, NOW) if command["op"] == "acquire"
               else commands.kv_unlock(key, value, sid))
        return self.cat.apply(self.cat.last_index + 1, cmd)

    def read(self, key: str) -> tuple[str, str | None, int] | None:
        entry = self.cat.kv_get(key)
        if entry is None:
            return None
        return entry.value.decode(), entry.session or None, entry.lock_index

    def snapshot(self) -> bytes:
        return self.cat.snapshot()


class LockWorkload:
    """Makes the simulator's servers' state machines and the clients' lock operations."""

    def __init__(self, clients: list[str], keys: int = 2) -> None:
        self.clients = clients
        self.keys = keys

    def machine(self, data: bytes | None = None) -> LockMachine:
        return LockMachine(self.clients, Catalog.restore(data)) if data else LockMachine(self.clients)

    def next_op(self, rng: random.Random, client: str, oid: int, now: float) -> tuple[LockOp, dict[str, Any]]:
        """The next operation of `client`, and the command that carries it (unused for a get)."""
        key = f"lock{rng.randrange(self.keys)}"
        kind = rng.choice(KINDS)
        op = LockOp(client=client, kind=kind, key=key, invoke=now,  # type: ignore[arg-type]
                    value=f"{client}-{oid}", session=session_id(client))
        command = {"id": oid, "op": kind, "key": key, "value": op.value, "session": op.session}
        return op, command
