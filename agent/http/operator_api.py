"""`/v1/status/*`, `/v1/operator/raft/*` and `/v1/snapshot`: the Raft server's operator surface.

Every handler talks to `api.agent.server` (a ServerView, None on client agents); a ServerError it raises
becomes its status with the message as the body (mapped in API.__call__). On a client agent the status,
raft and snapshot endpoints are run by a server and relayed (server_forward.py, as Consul's clients forward
them); the keyring stays local: its Serf queries reach every member from any agent.

ACLs, as Consul: status needs none; raft configuration operator:read, peer removal operator:write; keyring
listing keyring:read, its changes keyring:write; snapshots a management token (acl:write), and a restore
is refused before one byte of its body is read.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import TYPE_CHECKING

import trio

from ...snapshot_archive import ArchiveError, StateTooLarge, pack, unpack, unpack_file
from ..acl.authorizer import Authorizer
from ..rpc.errors import Unreachable
from ..rpc.framing import MAX_FRAME
from . import server_forward
from .acl_gate import require_acl
from .agent_api import advertise_address, gossip_of
from .messages import Request, Response
from .query import HTTPError, Query, bad_request
from .render import keyring_json, raft_configuration_json
from .server_forward import on_a_server
from .upload import body_to_file, upload_dir

if TYPE_CHECKING:
    from .api import API
    from .view import ServerView

CT_GZIP = (b"content-type", b"application/x-gzip")
# A restore travels to every server as one Raft command, in one :8300 frame: a larger state would be
# appended on the leader and then refused by every follower, stalling replication.
MAX_RESTORE_STATE = MAX_FRAME - 1024 * 1024
NOT_A_SERVER = "this agent is not a server"
# A client's /v1/status/leader answers "" (no leader known, as a server without one does) at once while its
# catalog feed knows no leader, and when no server answers within this: readiness probes and scripts polling
# for a leader get an answer, not a 7 s hold.
STATUS_WAIT = 2.0
# Tar headers, meta.json and SHA256SUMS around state.bin: what an archive inflates to beyond its state.
_ARCHIVE_OVERHEAD = 1024 * 1024


def _server(api: API) -> ServerView:
    """The agent's Raft server, or a 500 as Consul gives for server-only endpoints on a client."""
    server = api.agent.server
    if server is None:
        raise HTTPError(500, NOT_A_SERVER)
    return server


def _self_address(api: API) -> str:
    return f"{advertise_address(api)}:{api.agent.config.ports.server}"


# ---------------------------------------------------------------------- status


async def status_leader(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/status/leader: the leader's "ip:port", or "" while there is none."""
    caller = server_forward.server_caller(api)
    if caller is not None:
        if not api.agent.leader_status()[0]:  # our feed's server knows no leader, or we have no feed yet
            return api.json("", query)
        with trio.move_on_after(STATUS_WAIT):
            try:
                return await server_forward.forward(api, caller, request)
            except Unreachable:
                pass
        return api.json("", query)
    server = api.agent.server
    if server is None:
        # No Raft running here (a single -dev node or an agent under test) leads itself.
        return api.json(_self_address(api), query)
    return api.json(server.leader_address() or "", query)


@on_a_server
async def status_peers(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/status/peers: the voters' "ip:port" addresses."""
    server = api.agent.server
    if server is None:
        return api.json([_self_address(api)], query)
    return api.json(list(server.peers()), query)


# ---------------------------------------------------------------------- operator raft


@on_a_server
async def raft_configuration(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/operator/raft/configuration: {"Servers": [{ID, Node, Address, Leader, Voter, ...}], "Index"}."""
    require_acl(api, request, Authorizer.operator_read)
    index, servers = _server(api).configuration()
    return api.json(raft_configuration_json(index, servers), query)


@on_a_server
async def raft_remove_peer(api: API, request: Request, query: Query, arg: str) -> Response:
    """DELETE /v1/operator/raft/peer?id=<server id> or ?address=<ip:port>."""
    require_acl(api, request, Authorizer.operator_write)
    server = _server(api)
    server_id, address = query.get("id"), query.get("address")
    if not server_id and not address:
        raise bad_request("Must specify either ?id with the server's ID or ?address with IP:port of peer to remove")
    if server_id and address:
        raise bad_request("Must specify only one of ?id or ?address")
    await server.remove_peer(server_id=server_id or None, address=address or None)
    return 200, [], b""


# ---------------------------------------------------------------------- snapshot


@on_a_server
async def snapshot_save(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/snapshot[?stale]: a gzipped tar archive; X-Consul-Index is the snapshot's index."""
    require_acl(api, request, Authorizer.acl_write)  # the whole state, secrets included: management only
    server = _server(api)
    meta, state = await server.snapshot(query.has("stale"))
    try:
        body = pack(meta, state)
    except ArchiveError as exc:
        # The server handed back meta we cannot archive: a bug on our side, not the caller's.
        raise HTTPError(500, f"failed to build snapshot archive: {exc}") from None
    known = b"true" if server.leader_address() else b"false"
    headers = [CT_GZIP, (b"x-consul-index", b"%d" % int(meta["Index"])), (b"x-consul-knownleader", known)]
    return 200, headers, body


def _too_large(size: int) -> HTTPError:
    return HTTPError(413, f"snapshot state is {size} bytes; a restore is replicated as one Raft command of "
                          f"at most {MAX_RESTORE_STATE} bytes")


def _inflated_size(data: bytes, limit: int) -> int:
    """How many bytes gzip `data` inflates to (every member), counting no further than just past `limit`."""
    total = 0
    while data and total <= limit:
        inflater = zlib.decompressobj(wbits=31)
        try:
            while data and not inflater.eof and total <= limit:
                total += len(inflater.decompress(data, 1024 * 1024))
                data = inflater.unconsumed_tail
        except zlib.error:
            return total  # not gzip: unpack names the defect
        data = inflater.unused_data
    return total


def _unpack_bounded(body: bytes) -> tuple[dict[str, object], bytes]:
    """(meta, state) of an in-memory archive; 413 before inflating a state larger than a restore takes (a small
    body of zeros inflates 1000:1), 400 for a bad archive."""
    limit = MAX_RESTORE_STATE + _ARCHIVE_OVERHEAD
    if _inflated_size(body, limit) > limit:
        raise HTTPError(413, f"snapshot archive inflates to more than {limit} bytes; a restore is replicated as "
                             f"one Raft command of at most {MAX_RESTORE_STATE} bytes")
    try:
        return unpack(body)
    except ArchiveError as exc:
        raise bad_request(str(exc)) from None


async def snapshot_restore(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/snapshot with an archive as the body: stream it to a temp file in the data dir, verify it
    there (off the event loop), then replace the cluster's state."""
    # Before the body: a refused restore must not get to fill the disk (the answer closes the connection).
    require_acl(api, request, Authorizer.acl_write)
    caller = server_forward.server_caller(api)
    if caller is not None:  # a client agent: a server restores it (and checks the token again)
        return await server_forward.forward(api, caller, request, max_body=server_forward.MAX_SNAPSHOT_BODY)
    server = _server(api)
    if request.body_stream is None:  # in memory: forwarded by a client agent (or a test server's)
        meta, state = await trio.to_thread.run_sync(_unpack_bounded, request.body)
    else:
        async with body_to_file(request.body_stream, upload_dir(api.agent.config.data_dir)) as path:
            try:
                # The state size is checked before the state is read: zeros inflate 1000:1.
                meta, state = await trio.to_thread.run_sync(unpack_file, path, MAX_RESTORE_STATE)
            except StateTooLarge as exc:
                raise _too_large(exc.size) from None
            except ArchiveError as exc:
                raise bad_request(str(exc)) from None
    if len(state) > MAX_RESTORE_STATE:
        raise _too_large(len(state))
    await server.restore(meta, state)
    return 200, [], b""


# ---------------------------------------------------------------------- keyring

_KEY_QUERIES = {"POST": "_serf_install-key", "PUT": "_serf_use-key", "DELETE": "_serf_remove-key"}


async def keyring(api: API, request: Request, query: Query, arg: str) -> Response:
    """/v1/operator/keyring: GET lists keys on every member; POST installs, PUT makes primary, DELETE
    removes the body's {"Key": base64} everywhere (Serf's key queries)."""
    reading = request.method == "GET"
    require_acl(api, request, Authorizer.keyring_read if reading else Authorizer.keyring_write)
    gossip = gossip_of(api)
    if reading:
        return api.json([keyring_json(await gossip.key_operation("_serf_list-keys"))], query)
    try:
        body = json.loads(request.body or b"{}")
        key = base64.b64decode(body["Key"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise HTTPError(400, 'Request body must be {"Key": "<base64 key>"}') from None
    result = await gossip.key_operation(_KEY_QUERIES[request.method], key)
    if result.num_err:
        detail = "; ".join(f"{node}: {msg}" for node, msg in sorted(result.messages.items()))
        missing = result.num_nodes - result.num_resp
        if missing > 0:
            detail = "; ".join(filter(None, [detail, f"{missing} node(s) did not answer"]))
        raise HTTPError(500, f"{result.num_err}/{result.num_nodes} nodes reported failure: {detail}")
    return 200, [], b""
