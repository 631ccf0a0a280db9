"""`/v1/agent/connect/proxy/:proxy_id`: a local sidecar's whole data-plane configuration (proxy/snapshot.py
ProxySnapshot, `to_wire()` JSON), for `meshagent connect proxy` running the data plane as its own process.

Blocking on the snapshot version (`?index=N&wait=`, X-Consul-Index = version), as Consul's blocking queries.
The body holds the service's leaf private key, as /v1/agent/connect/ca/leaf does: so with ACLs on it needs
service:write on the proxy's destination service (Consul's managed-proxy endpoint asked the same), the
permission that leaf needs. Without ACLs anyone who can reach the HTTP API can read it, which is why the
API listens on loopback by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ...proxy.snapshot import ProxySnapshot
from ..acl.identity import require
from .catalog_api import required
from .messages import Request, Response
from .query import HTTPError, Query

if TYPE_CHECKING:
    from .api import API

PROXY_KIND = "connect-proxy"
# Without ?index a caller still gets a first snapshot when one is being built (a leaf is being signed): it
# waits this long at most, then 503 (the standalone proxy retries).
FIRST_SNAPSHOT_WAIT = 10.0


class SnapshotSource(Protocol):
    """What this endpoint needs of the agent's ProxyRunner (agent/connect/proxy_runner.py)."""

    def snapshot(self, proxy_id: str) -> tuple[int, ProxySnapshot] | None: ...
    async def wait_snapshot(self, proxy_id: str, after_version: int,
                            timeout: float) -> tuple[int, ProxySnapshot] | None: ...


def _source(api: API, request: Request, proxy_id: str) -> SnapshotSource:
    """The agent's runner, after the id was checked to be a local connect-proxy (404/400 otherwise)."""
    defn = api.agent.local.services().get(proxy_id)
    if defn is None:
        raise HTTPError(404, f"unknown proxy service ID: {proxy_id}")
    if defn.kind != PROXY_KIND:
        kind = defn.kind or "typical"
        raise HTTPError(400, f"service {proxy_id!r} is not a connect-proxy (its kind is {kind})")
    identity = api.identity(request)
    if identity.enabled:
        target = str(defn.proxy.get("DestinationServiceName") or defn.name)
        require(identity, identity.authorizer.service_write(target))
    # The agent's attribute (set by Agent when connect runs); read by name so that an agent without it
    # answers a clear error instead of an AttributeError.
    runner: SnapshotSource | None = getattr(api.agent, "proxy_runner", None)
    if runner is None:
        raise HTTPError(500, "connect is not enabled on this agent: no proxy configuration is built")
    return runner


async def proxy_config(api: API, request: Request, query: Query, arg: str) -> Response:
    """GET /v1/agent/connect/proxy/:proxy_id (?index= blocks until the snapshot version passes it)."""
    proxy_id = required(arg, "proxy service ID")
    api.identity(request)  # an unknown token is refused before the ID is looked up
    runner = _source(api, request, proxy_id)
    current = runner.snapshot(proxy_id)
    after = max(0, query.index)
    # Wait for the first snapshot, or block while the version is the caller's. An index above the current
    # version comes from before this agent restarted (versions count from 1 again): answered at once, so a
    # standalone proxy is not left on its old configuration for a whole wait.
    wait_for: int | None = None  # the version to wait past, if any
    if current is None:
        wait_for = 0
    elif current[0] == after:
        wait_for = after
    if wait_for is not None:
        timeout = query.wait if after > 0 else min(query.wait, FIRST_SNAPSHOT_WAIT)
        with request.hangup_ends_wait():
            current = await runner.wait_snapshot(proxy_id, wait_for, timeout)
        api.recheck(request)  # the snapshot holds the leaf key: not for a token revoked during the wait
        _source(api, request, proxy_id)  # deregistered while we waited: 404, not a stale configuration
    if current is None:
        raise HTTPError(503, f"no proxy configuration for {proxy_id!r} yet (its leaf certificate or the CA "
                             f"roots are not ready); retry")
    version, snapshot = current
    return api.json(snapshot.to_wire(), query, extra=[(b"x-consul-index", b"%d" % max(1, version))])
