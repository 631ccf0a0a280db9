"""Log entries and the cluster membership they carry."""

from __future__ import annotations

from dataclasses import dataclass

# Entry kinds. COMMAND data is an opaque state-machine command (msgpack bytes); CONFIG data is an encoded
# Membership; NOOP is the entry a new leader appends to commit its term.
COMMAND, CONFIG, NOOP = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry; `data` stays opaque bytes so followers never decode commands they only store."""

    index: int
    term: int
    kind: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Server:
    """A member of the Raft configuration."""

    id: str
    address: str
    voter: bool = True


@dataclass(frozen=True, slots=True)
class Membership:
    """The set of servers; only voters count for elections and commitment."""

    servers: tuple[Server, ...] = ()

    @property
    def voters(self) -> frozenset[str]:
        """IDs of the voting servers."""
        return frozenset(s.id for s in self.servers if s.voter)

    def get(self, server_id: str) -> Server | None:
        """The server with this ID, if it is a member."""
        for s in self.servers:
            if s.id == server_id:
                return s
        return None

    def ids(self) -> frozenset[str]:
        """IDs of every member, voter or not."""
        return frozenset(s.id for s in self.servers)

    def with_server(self, server: Server) -> Membership:
        """A copy with `server` added or replaced."""
        rest = tuple(s for s in self.servers if s.id != server.id)
        return Membership(tuple(sorted((*rest, server), key=lambda s: s.id)))

    def without(self, server_id: str) -> Membership:
        """A copy without `server_id`."""
        return Membership(tuple(s for s in self.servers if s.id != server_id))

    def to_wire(self) -> list[list[object]]:
        """A msgpack-ready form."""
        return [[s.id, s.address, s.voter] for s in self.servers]

    @classmethod
    def from_wire(cls, raw: object) -> Membership:
        """Parse `to_wire` output; raises ValueError on anything else."""
        if not isinstance(raw, list):
            raise ValueError("membership must be a list")
        servers = []
        for item in raw:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                    or not isinstance(item[1], str) or not isinstance(item[2], bool)):
                raise ValueError(f"bad server entry {item!r}")
            servers.append(Server(item[0], item[1], item[2]))
        return cls(tuple(servers))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the last entry it includes and the membership at that entry."""

    index: int
    term: int
    membership: Membership

    def to_wire(self) -> list[object]:
        """A msgpack-ready form."""
        return [self.index, self.term, self.membership.to_wire()]

    @classmethod
    def from_wire(cls, raw: object) -> SnapshotMeta:
        """Parse `to_wire` output; raises ValueError on anything else."""
        if (not isinstance(raw, list) or len(raw) != 3 or type(raw[0]) is not int
                or type(raw[1]) is not int):
            raise ValueError("snapshot meta must be [index, term, membership]")
        return cls(raw[0], raw[1], Membership.from_wire(raw[2]))
