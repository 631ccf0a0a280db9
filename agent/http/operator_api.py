"""`/v1/status/*`, `/v1/operator/raft/*` and `/v1/snapshot`: the Raft server's operator surface.

Every handler talks to `api.agent.server` (a ServerView, None on client agents); a ServerError it raises
becomes its status with the message as the body (mapped in API.__call__).

ACLs, as Consul: status needs none; raft configuration operator:read, peer removal operator:write; keyring
listing keyring:read, its changes keyring:write; snapshots a management token (acl:write), and a restore
is refused before one byte of its body is read.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING

import trio

from ...snapshot_archive import ArchiveError, StateTooLarge, pack, unpack, unpack_file
from ..acl.authorizer import Authorizer
from ..rpc.framing import MAX_FRAME
from .acl_gate import require_acl
from .agent_api import advertise_address, gossip_of
from .messages import Request, Response
from .query import HTTPError, Query, bad_request
from .render import keyring_json, raft_configuration_json
from .upload import body_to_file, upload_dir

if TYPE_CHECKING:
    from .api import API
    from .view import ServerView

CT_GZIP = (b"content-type", b"application/x-gzip")
# A restore travels to every server as one Raft command, in one :8300 frame: a larger state would be
# appended on the leader and then refused by every follower, stalling replication.
MAX_RESTORE_STATE = MAX_FRAME - 1024 * 1024
NOT_A_SERVER = "this agent is not a server"


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
    server = api.agent.server
    if server is None:
        # No Raft running here (a single -dev node or an agent under test) leads itself.
        return api.json(_self_address(api), query)
    return api.json(server.leader_address() or "", query)


async def status_peers(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/status/peers: the voters' "ip:port" addresses."""
    server = api.agent.server
    if server is None:
        return api.json([_self_address(api)], query)
    return api.json(list(server.peers()), query)


# ---------------------------------------------------------------------- operator raft


async def raft_configuration(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/operator/raft/configuration: {"Servers": [{ID, Node, Address, Leader, Voter, ...}], "Index"}."""
    require_acl(api, request, Authorizer.operator_read)
    index, servers = _server(api).configuration()
    return api.json(raft_configuration_json(index, servers), query)


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


async def snapshot_restore(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/snapshot with an archive as the body: stream it to a temp file in the data dir, verify it
    there (off the event loop), then replace the cluster's state."""
    # Before the body: a refused restore must not get to fill the disk (the answer closes the connection).
    require_acl(api, request, Authorizer.acl_write)
    server = _server(api)
    if request.body_stream is None:  # an in-memory body (a test server without streaming)
        try:
            meta, state = unpack(request.body)
        except ArchiveError as exc:
            raise bad_request(str(exc)) from None
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
