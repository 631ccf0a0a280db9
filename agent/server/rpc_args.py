"""Strict parsing of server-to-server RPC arguments that change or steer the Raft configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...raft.entry import MAX_ID_LEN, valid_address
from ..rpc.errors import Rejected

MAX_NAME_LEN = 128
MAX_BOOTSTRAP_EXPECT = 64


@dataclass(frozen=True, slots=True)
class AddServerArgs:
    """A validated add_server call."""

    id: str
    address: str
    name: str


def _text(v: object, limit: int, empty_ok: bool = False) -> bool:
    return isinstance(v, str) and (empty_ok or bool(v)) and len(v) <= limit and v.isprintable()


def _server_id(v: object) -> bool:
    return isinstance(v, str) and _text(v, MAX_ID_LEN) and not any(c.isspace() for c in v)


def parse_add_server(args: Any) -> AddServerArgs:
    """{id, address, name?}: an ID, a host:port and a node name, nothing else; Rejected otherwise."""
    if not isinstance(args, dict) or not {"id", "address"} <= args.keys() <= {"id", "address", "name"}:
        raise Rejected("add_server needs {id, address, name}")
    sid, address, name = args["id"], args["address"], args.get("name", "")
    if not _server_id(sid):
        raise Rejected(f"add_server: id must be 1-{MAX_ID_LEN} printable characters without spaces")
    if not valid_address(address):
        raise Rejected("add_server: address must be host:port")
    if not _text(name, MAX_NAME_LEN, empty_ok=True):
        raise Rejected(f"add_server: name must be a printable string of at most {MAX_NAME_LEN}")
    return AddServerArgs(sid, address, name)


def parse_hello(raw: Any) -> dict[str, Any] | None:
    """A peer's hello with every field checked (None when malformed); only the known fields are kept."""
    if not isinstance(raw, dict):
        return None
    sid, address, name = raw.get("id"), raw.get("address"), raw.get("name", "")
    expect, leader, bootstrapped = raw.get("bootstrap_expect", 0), raw.get("leader"), raw.get("bootstrapped", False)
    dc = raw.get("datacenter", "")
    if (not _server_id(sid) or not valid_address(address) or not _text(name, MAX_NAME_LEN, True)
            or type(expect) is not int or not 0 <= expect <= MAX_BOOTSTRAP_EXPECT
            or not (leader is None or leader == "" or valid_address(leader))
            or not isinstance(bootstrapped, bool) or not _text(dc, MAX_NAME_LEN, True)):
        return None
    return {"id": sid, "name": name, "address": address, "datacenter": dc, "bootstrap_expect": expect,
            "leader": leader or None, "bootstrapped": bootstrapped}
