"""The in-process /v1 API with a stand-in for the agent's ProxyRunner, on a 127.0.19.N address: what the
tests of /v1/agent/connect/proxy/:id, proxy/http_feed.py and `meshagent connect proxy` serve snapshots from.

`StandInRunner` has ProxyRunner's two calls (i14-interfaces.md "Agent feed"); `publish` is what a rebuilt
snapshot does in the agent."""

from __future__ import annotations

import trio
from meshagent.agent.config.types import ServiceDefinition
from meshagent.agent.http.server import HTTPServer
from meshagent.proxy.snapshot import ProxySnapshot, TLSMaterial, Upstream

from .http_harness import FakeAgent, ServerThread
from .mesh_certs import LeafFiles, MeshCA

PROXY_ID = "web-sidecar-proxy"
CA = MeshCA()


_LEAVES: dict[str, LeafFiles] = {}


def _leaf() -> LeafFiles:
    """web's leaf, signed once: snapshots built twice compare equal."""
    if "web" not in _LEAVES:
        _LEAVES["web"] = CA.leaf("web")
    return _LEAVES["web"]


class StandInRunner:
    """ProxyRunner's snapshot/wait_snapshot over a dict; counts waiters so tests can see a request parked."""

    def __init__(self) -> None:
        self.snaps: dict[str, tuple[int, ProxySnapshot]] = {}
        self.changed = trio.Event()
        self.waiters = 0

    def snapshot(self, proxy_id: str) -> tuple[int, ProxySnapshot] | None:
        return self.snaps.get(proxy_id)

    async def wait_snapshot(self, proxy_id: str, after_version: int,
                            timeout: float) -> tuple[int, ProxySnapshot] | None:
        self.waiters += 1
        try:
            with trio.move_on_after(timeout):
                while True:
                    current = self.snaps.get(proxy_id)
                    if current is not None and current[0] > after_version:
                        return current
                    if current is None and after_version > 0:
                        return None  # the id went away (ProxyRunner returns early then)
                    await self.changed.wait()
        finally:
            self.waiters -= 1
        return self.snaps.get(proxy_id)

    async def publish(self, snap: ProxySnapshot) -> None:
        """Make `snap` the proxy's current snapshot (its version is snap.version) and wake the waiters."""
        self.snaps[snap.proxy_id] = (snap.version, snap)
        self.poke()

    def poke(self) -> None:
        """Wake every waiter (after a change made by hand)."""
        self.changed.set()
        self.changed = trio.Event()


class ProxyAPIServer(ServerThread):
    """The harness's in-process API on `host` (one of 127.0.19.N), serving snapshots from `runner`."""

    def __init__(self, host: str, port: int = 0, agent: FakeAgent | None = None,
                 runner: StandInRunner | None = None, embedded: bool = False) -> None:
        agent = agent or FakeAgent()
        self.runner = runner or StandInRunner()
        agent.proxy_runner = self.runner  # type: ignore[attr-defined]
        if not agent.local._services:
            register_web(agent, embedded)
        super().__init__(agent=agent)
        self.host = host
        self.server = HTTPServer(self.api, host, port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def publish(self, snap: ProxySnapshot) -> None:
        """StandInRunner.publish on the server's loop."""
        self.run(self.runner.publish, snap)


def register_web(agent: FakeAgent, embedded: bool = False) -> None:
    """`web` and its sidecar `web-sidecar-proxy` as local services (the sidecar opted out of the embedded
    data plane unless `embedded`)."""
    agent.local._services["web"] = ServiceDefinition(name="web", id="web", port=8080)
    config = {} if embedded else {"Config": {"embedded": False}}
    agent.local._services[PROXY_ID] = ServiceDefinition(
        name="web-sidecar-proxy", id=PROXY_ID, port=21000, kind="connect-proxy",
        proxy={"DestinationServiceName": "web", "DestinationServiceID": "web", **config})


def web_snapshot(version: int, *, public: tuple[str, int] = ("127.0.19.2", 21000),
                 local_port: int = 8080, upstreams: tuple[Upstream, ...] | None = None) -> ProxySnapshot:
    """A snapshot of web's sidecar signed by the suite's CA."""
    leaf = _leaf()
    if upstreams is None:
        upstreams = (Upstream("db", "127.0.19.3", 9191, spiffe_ids=(CA.spiffe_id("db"),)),)
    return ProxySnapshot(proxy_id=PROXY_ID, service="web", datacenter="dc1",
                         tls=TLSMaterial(leaf.cert_pem, leaf.key_pem, (CA.root_pem,), CA.trust_domain,
                                         leaf.spiffe_id),
                         public_address=public[0], public_port=public[1], local_service_address=public[0],
                         local_service_port=local_port, upstreams=upstreams, version=version)
