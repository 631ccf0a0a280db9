"""A transaction's undo journal (agent/catalog/txn.py): the rows it touched as they were, put back on failure.

Pure. Before a transaction's op writes, it names what it may change: KV keys (with the sessions holding them)
or a node (its row, services and checks: every catalog op is on one node's rows). The journal keeps those
rows' before-images, so a committed transaction costs O(rows touched), not O(catalog). Rollback restores the
rows, the derived indexes (sorted KV keys, services by name/node/mesh target, checks by node, sessions' held
keys) and, where an op could delete a row, the tables' insertion order (captured then, O(table)), so the
snapshot is byte-identical to the one before.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .model import Check, KVEntry, Node, Service

if TYPE_CHECKING:
    from .state import Catalog


def _restore(table: dict[Any, Any], before: dict[Any, Any], order: list[Any] | None) -> None:
    """Put `before` (None: absent) back into `table`; then, when `order` was captured, its insertion order."""
    for key, row in before.items():
        if row is None:
            table.pop(key, None)
        else:
            table[key] = row
    if order is not None:
        items = [(key, table[key]) for key in order if key in table]
        table.clear()
        table.update(items)


class Undo:
    """Before-images of what a transaction touched, and how to put them back."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.kv: dict[str, KVEntry | None] = {}
        self.graveyard: dict[str, int | None] = {}
        self.held: dict[str, set[str] | None] = {}
        self.kv_order: list[str] | None = None
        self.graveyard_order: list[str] | None = None
        self.nodes: dict[str, Node | None] = {}
        self.services: dict[tuple[str, str], Service | None] = {}
        self.checks: dict[tuple[str, str], Check | None] = {}
        self.row_orders: tuple[list[str], list[tuple[str, str]], list[tuple[str, str]]] | None = None

    # ------------------------------------------------------------------ before a write

    def kv_keys(self, keys: Iterable[str], session: str, deleting: bool) -> None:
        """Before a KV write to `keys` (by `session`, for lock verbs); `deleting`: it may delete existing keys."""
        cat = self.catalog
        if deleting and self.kv_order is None:
            self.kv_order = list(cat._kv)  # a deleted key put back would otherwise move to the end
        for key in keys:
            if key not in self.kv:
                entry = cat._kv.get(key)
                self.kv[key] = entry
                self.graveyard[key] = cat._kv_graveyard.get(key)
                if entry is not None and entry.session:
                    self._held(entry.session)
            if self.graveyard_order is None and key in cat._kv_graveyard:
                self.graveyard_order = list(cat._kv_graveyard)  # re-creating the key drops it from there
        if session:
            self._held(session)

    def _held(self, session: str) -> None:
        if session not in self.held:
            keys = self.catalog.sessions._held.get(session)
            self.held[session] = set(keys) if keys is not None else None

    def node(self, name: str, deleting: bool) -> None:
        """Before a write to one node's rows (its row, services, checks); `deleting`: it may delete rows."""
        cat = self.catalog
        if deleting and self.row_orders is None:
            self.row_orders = (list(cat._nodes), list(cat._services), list(cat._checks))
        nkey = name.lower()
        if nkey in self.nodes:
            return
        self.nodes[nkey] = cat._nodes.get(nkey)
        for sid in cat._services_by_node.get(nkey, ()):
            self.services[(nkey, sid)] = cat._services[(nkey, sid)]
        for cid in cat._checks_by_node.get(nkey, ()):
            self.checks[(nkey, cid)] = cat._checks[(nkey, cid)]

    # ------------------------------------------------------------------ rollback

    def rollback(self) -> None:
        """Every touched row, index and order as before; no watch key moves (nothing changed)."""
        cat = self.catalog
        if self.kv:
            self._rollback_kv()
        for nkey in self.nodes:
            self._rollback_node(nkey)
        if self.row_orders is not None:
            _restore(cat._nodes, {}, self.row_orders[0])
            _restore(cat._services, {}, self.row_orders[1])
            _restore(cat._checks, {}, self.row_orders[2])
        cat._changed = set()

    def _rollback_kv(self) -> None:
        cat = self.catalog
        _restore(cat._kv, self.kv, self.kv_order)
        _restore(cat._kv_graveyard, self.graveyard, self.graveyard_order)
        keys = cat._kv_keys
        for key, entry in self.kv.items():
            pos = bisect.bisect_left(keys, key)
            listed = pos < len(keys) and keys[pos] == key
            if entry is not None and not listed:
                keys.insert(pos, key)
            elif entry is None and listed:
                del keys[pos]
        held = cat.sessions._held
        for sid, before in self.held.items():
            if before is None:
                held.pop(sid, None)
            else:
                held[sid] = before

    def _rollback_node(self, nkey: str) -> None:
        cat = self.catalog
        services = {sid: svc for (n, sid), svc in self.services.items() if n == nkey}
        checks = {cid: check for (n, cid), check in self.checks.items() if n == nkey}
        # The node's current rows leave the derived indexes (rows new in this transaction leave the table);
        # its rows as they were are put back (in place: their order holds) and rejoin them.
        for sid in list(cat._services_by_node.get(nkey, ())):
            svc = cat._services[(nkey, sid)] if sid in services else cat._services.pop((nkey, sid))
            cat._unlink_service_name(svc)
            cat._unlink_connect(svc)
        cat._services_by_node.pop(nkey, None)
        for cid in list(cat._checks_by_node.get(nkey, ())):
            if cid not in checks:
                del cat._checks[(nkey, cid)]
        cat._checks_by_node.pop(nkey, None)
        node = self.nodes[nkey]
        if node is None:
            cat._nodes.pop(nkey, None)
        else:
            cat._nodes[nkey] = node
        for sid, old in services.items():
            if old is not None:
                cat._services[(nkey, sid)] = old
                cat._services_by_name.setdefault(old.service.lower(), set()).add((nkey, sid))
                cat._services_by_node.setdefault(nkey, set()).add(sid)
                cat._link_connect(old)
        for cid, check in checks.items():
            if check is not None:
                cat._checks[(nkey, cid)] = check
                cat._checks_by_node.setdefault(nkey, set()).add(cid)


__all__ = ["Undo"]
