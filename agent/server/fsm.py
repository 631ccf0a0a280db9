"""CatalogFSM: the catalog as Raft's state machine: every committed command, snapshot and restore, in one place.

A log entry holds one encoded command, or a "batch" of them (writes that queued up together), or a "restore"
of a whole snapshot. Each command gets the next catalog index at or above its entry's Raft index, so every
replica maps them the same way and the catalog indexes agree across servers. Client agents' replicas hear
every applied command through the feed.
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack

from ...raft.entry import COMMAND, Entry
from ..catalog import Catalog, CommandError
from ..rpc.errors import Rejected, ServerError
from ..store import CatalogStore
from .feed import CatalogFeed

log = logging.getLogger("meshagent.server")

Outcome = tuple[Any, ServerError | None]  # one command's result, or why it failed


def restorable(data: bytes) -> bool:
    """Whether snapshot data (from a leader, or an operator's restore) restores into a catalog."""
    try:
        Catalog.restore(data)
    except Exception:
        log.error("raft: refusing a snapshot from the leader that does not restore", exc_info=True)
        return False
    return True


def check_restore(state: bytes) -> None:
    """Raise Rejected when an operator's snapshot state does not decode (checked before it is proposed)."""
    try:
        Catalog.restore(state)
    except Exception as exc:
        raise Rejected(f"snapshot state does not decode: {exc}") from exc


def restore_command(state: bytes) -> dict[str, Any]:
    """The command that replaces the catalog with `state` on every server, through the log."""
    return {"op": "restore", "state": state}


def batch_command(datas: list[bytes]) -> bytes:
    """One log entry holding several encoded commands, applied in order."""
    data: bytes = msgpack.packb({"op": "batch", "commands": datas}, use_bin_type=True)
    return data


class CatalogFSM:
    """Applies committed entries to the catalog store and tells the feed; `index` is what it has applied."""

    def __init__(self, store: CatalogStore, feed: CatalogFeed) -> None:
        self.store = store
        self.feed = feed
        # What the catalog has really applied. The core's applied_index runs ahead of it while a batch's
        # fsync is in flight, so reads must wait on this one.
        self.index = 0
        self.commands_applied = 0

    def open(self, index: int, data: bytes) -> None:
        """Start from a snapshot taken at Raft `index` (at startup)."""
        self.store.restore(data)
        self.index = index

    def install(self, index: int, data: bytes) -> None:
        """Replace the catalog with a snapshot a leader sent (taken at Raft `index`)."""
        self.store.restore(data)
        self.feed.restored()
        self.index = index

    def snapshot(self) -> bytes:
        """The catalog's snapshot, at `index`."""
        return self.store.catalog.snapshot()

    def apply(self, e: Entry) -> list[Outcome]:
        """Apply one committed entry: one outcome per command it holds (none for no-ops and configurations)."""
        outcomes: list[Outcome] = []
        if e.kind == COMMAND:
            outcomes = self._apply_entry(e)
            self.commands_applied += len(outcomes)
        self.index = e.index
        return outcomes

    def _apply_entry(self, e: Entry) -> list[Outcome]:
        try:
            command = msgpack.unpackb(e.data, raw=False)
        except Exception as exc:
            return [(None, ServerError(f"undecodable command: {exc}"))]
        if isinstance(command, dict) and command.get("op") == "batch" and isinstance(command.get("commands"), list):
            outcomes: list[Outcome] = []
            for data in command["commands"]:
                try:
                    sub = msgpack.unpackb(data, raw=False)
                except Exception as exc:
                    outcomes.append((None, ServerError(f"undecodable command: {exc}")))
                    continue
                outcomes.append(self._apply_command(e.index, sub, data))
            return outcomes
        return [self._apply_command(e.index, command, e.data)]

    def _apply_command(self, raft_index: int, command: Any, data: bytes) -> Outcome:
        catalog = self.store.catalog
        # Raft indexes also count no-op and configuration entries, a batch entry holds several commands,
        # and after a restore the catalog may be ahead of the log: each command gets the next catalog
        # index at or above its entry's. Every replica maps them the same way, so they stay identical.
        index = max(raft_index, catalog.last_index + 1)
        if isinstance(command, dict) and command.get("op") == "restore":
            try:
                self.store.restore(command["state"], at_least=index)
            except (CommandError, KeyError, TypeError, ValueError) as exc:
                return None, ServerError(f"cannot restore snapshot: {exc}")
            self.feed.restored()
            return True, None
        try:
            return self.store.apply_committed(index, command), None
        except CommandError as exc:
            return None, Rejected(str(exc))
        except Exception as exc:
            # A committed command the catalog chokes on (a bug, or a hostile write): every replica fails it
            # the same way, so it is refused here too instead of ending the server.
            log.exception("raft: command at index %d failed to apply", raft_index)
            return None, Rejected(f"command failed: {type(exc).__name__}")
        finally:
            # Subscribed client agents apply the same command at the same index (a rejected one too:
            # it used its index here, so it must there).
            self.feed.publish(index, data, command)
