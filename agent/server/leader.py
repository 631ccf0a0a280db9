"""MembershipReconciler: on the leader, keeps the catalog's nodes and serfHealth checks in step with gossip."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ...gossip.member import Member
from ..rpc.errors import ServerError
from ..store import CatalogStore
from .raft_server import RaftServer
from .reconcile import MemberView, forget_commands, member_commands, reap_commands

log = logging.getLogger("meshagent.leader")

RECONCILE_INTERVAL = 60.0  # a full pass this often, besides one per member event and one per election


class MembershipReconciler:
    """Turns member events into catalog writes while this server leads; a full pass on every election."""

    def __init__(self, server: RaftServer, store: CatalogStore, members: Callable[[], list[Member]],
                 datacenter: str, reconnect_timeout: float) -> None:
        self._server = server
        self._store = store
        self._members = members
        self._datacenter = datacenter
        self._reconnect_timeout = reconnect_timeout
        self._dirty: set[str] = set()
        self._reaped: set[str] = set()
        self._wake = trio.Event()
        self._started = 0.0
        self.writes = 0

    def member_changed(self, name: str, reaped: bool = False) -> None:
        """A gossip member event (join, leave, failed, update, reap) about `name`."""
        (self._reaped if reaped else self._dirty).add(name)
        self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled."""
        self._started = trio.current_time()
        leading = False
        last_full = float("-inf")
        while True:
            with trio.move_on_after(1.0):
                await self._wake.wait()
            self._wake = trio.Event()
            if not self._server.is_leader():
                leading = False
                continue
            now = trio.current_time()
            full = not leading or now - last_full >= RECONCILE_INTERVAL
            names, self._dirty = self._dirty, set()
            reaped, self._reaped = self._reaped, set()
            try:
                await self._reconcile(full, names, reaped)
            except ServerError as exc:
                log.warning("reconcile: %s; retrying", exc)
                self._dirty |= names
                self._reaped |= reaped
                leading = False
                continue
            leading = True
            if full:
                last_full = now

    async def _reconcile(self, full: bool, names: set[str], reaped: set[str]) -> None:
        members = {m.name: MemberView.from_member(m) for m in self._members()}
        catalog = self._store.catalog
        cmds: list[dict[str, Any]] = []
        for name in (members if full else names & members.keys()):
            cmds.extend(member_commands(catalog, members[name], self._datacenter))
        for name in reaped - members.keys():
            cmds.extend(forget_commands(catalog, name))
        if full:
            # Absence means "reaped" only once we have been in the pool longer than reconnect_timeout.
            may_reap = trio.current_time() - self._started > self._reconnect_timeout
            cmds.extend(reap_commands(catalog, set(members), may_reap))
        for cmd in cmds:
            log.info("reconcile: %s %s", cmd["op"], cmd["node"] if isinstance(cmd["node"], str)
                     else cmd["node"].get("node"))
            await self._store.apply(cmd)
            self.writes += 1
