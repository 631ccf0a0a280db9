"""Bootstrap and join: find the other servers through hellos, bootstrap once `bootstrap_expect` agree, or ask
a leader to add us; the leader's side of that request (add as a non-voter) is here too."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ...raft.entry import Membership, Server
from ..rpc.errors import NoLeader, ServerError
from ..rpc.framing import split_address
from .peers import encode_names, load_names, save_names
from .rpc_args import parse_hello

if TYPE_CHECKING:
    from ...raft.node import Output
    from .driver import RaftDriver
    from .raft_server import RaftServer

log = logging.getLogger("meshagent.server")

MAX_SEEN = 64            # hellos kept from servers that contacted us before we bootstrapped
MAX_NAMES = 1024
NAMES_CHECK_INTERVAL = 1.0  # seconds between looks at the configuration (a join changes it, not the names)


def _bootstrap(driver: RaftDriver, membership: Membership, now: float) -> list[Output]:
    """(On the loop) bootstrap the core with the agreed configuration."""
    assert driver.node is not None
    return driver.node.bootstrap(membership)


class Bootstrap:
    """Who the other servers are (their hellos and names), and how this one becomes part of a cluster."""

    def __init__(self, server: RaftServer, names_path: Path | None = None) -> None:
        self.server = server
        self.names_path = names_path  # where names are kept across restarts (None: not kept)
        # server ID -> node name: those saved before a restart, then what hellos and the catalog tell
        self.names: dict[str, str] = {**dict(list(load_names(names_path).items())[:MAX_NAMES - 1]),
                                      server.id: server.name}
        self._seen: dict[str, dict[str, Any]] = {}  # hellos received from servers that contacted us
        self._names_changed = trio.Event()
        self._saved = b""

    def remember_name(self, server_id: str, name: str) -> None:
        """Note a server's node name (bounded); a new one is saved soon (keep_names)."""
        if self.names.get(server_id) == name:
            return
        if server_id in self.names or len(self.names) < MAX_NAMES:
            self.names[server_id] = name
            self._names_changed.set()

    async def keep_names(self) -> None:
        """Save the configuration's names whenever they (or the configuration) change, off the event loop."""
        if self.names_path is None:
            return
        while True:
            node = self.server.driver.node
            keep = {self.server.id} | ({s.id for s in node.membership.servers} if node is not None else set())
            data = encode_names(self.names, keep)
            if data != self._saved:
                try:
                    await trio.to_thread.run_sync(save_names, self.names_path, data)
                    self._saved = data
                except OSError as exc:  # names are a convenience: IDs are shown instead, Raft goes on
                    log.warning("raft: cannot save peer names to %s: %s", self.names_path, exc)
            self._names_changed = trio.Event()
            with trio.move_on_after(NAMES_CHECK_INTERVAL):  # membership changes come without a name
                await self._names_changed.wait()

    def bootstrapped(self) -> bool:
        """Whether this server is part of a cluster (its log knows the peers)."""
        node = self.server.driver.node
        return node is not None and (bool(node.membership.servers) or node.last_index > 0)

    def hello(self) -> dict[str, Any]:
        """What this server tells the others about itself."""
        s = self.server
        return {"id": s.id, "name": s.name, "address": s.address, "datacenter": s.datacenter,
                "bootstrap_expect": s.bootstrap_expect, "leader": s.leader_address(),
                "bootstrapped": self.bootstrapped()}

    async def on_hello(self, args: Any) -> dict[str, Any]:
        """The "hello" RPC: remember the caller (before we bootstrapped), answer with our hello."""
        hello = parse_hello(args)
        if hello is not None and hello["id"] != self.server.id:
            self.remember_name(hello["id"], hello["name"])
            if not self.bootstrapped() and (hello["id"] in self._seen or len(self._seen) < MAX_SEEN):
                self._seen[hello["id"]] = hello
        return self.hello()

    async def run(self) -> None:
        """Find the other servers through the join addresses; bootstrap once `bootstrap_expect` agree."""
        s = self.server
        if self.bootstrapped():
            return  # already part of a cluster: the log knows the peers
        if s.bootstrap_expect == 1 and not s.join:
            membership = Membership((Server(s.id, s.address, True),))
            await s.driver.call(lambda now: s.driver.node.bootstrap(membership))  # type: ignore[union-attr]
            log.info("raft: bootstrapped a single-server cluster")
            return
        if not s.bootstrap_expect and not s.join:
            log.warning("no -bootstrap-expect and no -retry-join: waiting to be added to a cluster")
            return
        warned: set[str] = set()
        while not self.bootstrapped():
            hellos = await self._round()
            log.debug("raft: bootstrap round: %d servers known (%s)", len(hellos),
                      ", ".join(f"{h.get('address')} expect={h.get('bootstrap_expect')} "
                                f"bootstrapped={h.get('bootstrapped')}" for h in hellos.values()))
            leader = next((h["leader"] for h in hellos.values() if h.get("leader")), None)
            if leader:
                try:
                    await s.call_server(leader, "add_server", {"id": s.id, "address": s.address,
                                                               "name": s.name}, timeout=5.0)
                    log.info("raft: asked leader %s to add us", leader)
                except ServerError as exc:
                    log.warning("raft: could not join through leader %s: %s", leader, exc)
            elif s.bootstrap_expect and not any(h.get("bootstrapped") for h in hellos.values()):
                for h in hellos.values():
                    if h.get("bootstrap_expect") not in (0, s.bootstrap_expect) and h["id"] not in warned:
                        warned.add(h["id"])
                        log.error("raft: server %s (%s) has bootstrap_expect %s but we have %d; not "
                                  "bootstrapping with it", h.get("name"), h.get("address"),
                                  h.get("bootstrap_expect"), s.bootstrap_expect)
                agree = sorted((h for h in hellos.values() if h.get("bootstrap_expect") == s.bootstrap_expect),
                               key=lambda h: h["id"])
                if len(agree) >= s.bootstrap_expect:
                    membership = Membership(tuple(Server(h["id"], h["address"], True) for h in agree))
                    await s.driver.call(partial(_bootstrap, s.driver, membership))
                    log.info("raft: bootstrapping with %d servers: %s", len(agree),
                             ", ".join(h["address"] for h in agree))
                    await self._sync_links_once_bootstrapped()
                    return
            await trio.sleep(1.0)

    async def _round(self) -> dict[str, dict[str, Any]]:
        """One round of hellos to the join addresses and the servers gossip shows, plus those that called us."""
        s = self.server
        hellos: dict[str, dict[str, Any]] = {s.id: self.hello()}
        for addr in dict.fromkeys([*s.join, *s.discover()]):
            host, _ = split_address(addr, s.port)
            target = f"{host}:{s.port}"
            if target == s.address:
                continue
            try:
                h = await s.call_server(target, "hello", self.hello(), timeout=2.0)
            except ServerError:
                continue
            parsed = parse_hello(h)
            if parsed is not None:
                hellos[parsed["id"]] = parsed
                self.remember_name(parsed["id"], parsed["name"])
        hellos.update({k: v for k, v in self._seen.items() if k not in hellos})
        return hellos

    async def _sync_links_once_bootstrapped(self) -> None:
        driver = self.server.driver
        with trio.move_on_after(5):
            while driver.node is not None and not driver.node.membership.servers:
                await trio.sleep(0.05)
        if driver.node is not None:
            driver.links.sync(driver.node.membership)

    async def add_server(self, server_id: str, address: str, name: str) -> None:
        """Leader side of a join: add as a non-voter (autopilot promotes it once stable); forwarded otherwise."""
        s = self.server
        node = s.driver.node
        assert node is not None
        if not s.is_leader():
            leader = s.leader_address()
            if not leader:
                raise NoLeader()
            await s.call_server(leader, "add_server", {"id": server_id, "address": address, "name": name})
            return
        existing = node.membership.get(server_id)
        if existing is not None and existing.address == address:
            return
        now = trio.current_time()
        if server_id == s.id:
            raise ServerError("the leader cannot be re-added through add_server", 409)
        if existing is not None and existing.voter and s.autopilot.healthy(server_id, now):
            # A live voter moving address would be demoted to a non-voter: only a server that is gone
            # (restarted elsewhere) may be re-added under its ID.
            raise ServerError(f"server {server_id} is a live voter at {existing.address}; refusing to move it "
                              f"to {address}", 409)
        clash = next((m for m in node.membership.servers if m.address == address and m.id != server_id), None)
        if clash is not None and (clash.id == s.id or s.autopilot.healthy(clash.id, now)):
            raise ServerError(f"address {address} belongs to live server {clash.id}", 409)
        self.remember_name(server_id, name)
        await s.driver.change_membership(node.membership.with_server(Server(server_id, address, False)))
        s.autopilot.added(server_id, trio.current_time())
