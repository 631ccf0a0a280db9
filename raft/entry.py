"""Log entries and the cluster membership they carry."""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

# Entry kinds. COMMAND data is an opaque state-machine command (msgpack bytes); CONFIG data is an encoded
# Membership; NOOP is the entry a new leader appends to commit its term.
COMMAND, CONFIG, NOOP = 0, 1, 2

MAX_ID_LEN = 256       # server IDs (UUIDs in practice)
MAX_ADDRESS_LEN = 300  # "host:port"
MAX_SERVERS = 256      # servers in one configuration
MAX_INDEX = 2**62      # terms and indexes read from disk or the wire stay below this (+1 never overflows)


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
        """Parse `to_wire` output; raises ValueError on anything else (bad shapes, duplicate IDs, bad addresses)."""
        if not isinstance(raw, list) or len(raw) > MAX_SERVERS:
            raise ValueError(f"membership must be a list of at most {MAX_SERVERS} servers")
        servers = []
        for item in raw:
            if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                    or not isinstance(item[1], str) or not isinstance(item[2], bool)
                    or not 0 < len(item[0]) <= MAX_ID_LEN or not valid_address(item[1])):
                raise ValueError(f"bad server entry {show_value(item)}")
            servers.append(Server(item[0], item[1], item[2]))
        if len({s.id for s in servers}) != len(servers):
            raise ValueError("duplicate server IDs in a membership")
        return cls(tuple(servers))

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        """The membership in CONFIG entry data; raises ValueError on anything malformed."""
        try:
            raw = msgpack.unpackb(data, raw=False)
        except Exception as exc:  # msgpack raises several types for garbage
            raise ValueError(f"undecodable membership: {exc}") from exc
        return cls.from_wire(raw)


def valid_address(address: object) -> bool:
    """Whether `address` is a plausible "host:port" (non-empty host without spaces, port 1-65535)."""
    if not isinstance(address, str) or not 3 <= len(address) <= MAX_ADDRESS_LEN:
        return False
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    return all(c.isascii() and c.isprintable() and not c.isspace() for c in host)


def show_value(v: object) -> str:
    """A short repr for error messages (hostile values can be huge)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


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
                or type(raw[1]) is not int or not 0 <= raw[0] <= MAX_INDEX or not 0 <= raw[1] <= MAX_INDEX):
            raise ValueError("snapshot meta must be [index, term, membership]")
        return cls(raw[0], raw[1], Membership.from_wire(raw[2]))
