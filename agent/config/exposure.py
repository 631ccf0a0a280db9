"""Warnings for settings that expose the agent to its network (Consul logs the same kind at start)."""

from __future__ import annotations

import ipaddress

from .errors import ConfigError
from .types import AgentConfig

Where = dict[str, tuple[str, int | None]]

SCRIPT_CHECKS_URL = "https://www.hashicorp.com/blog/protecting-consul-from-rce-risk-in-specific-configurations/"


def is_loopback(addresses: str) -> bool:
    """True when every address of a (space-separated) bind setting is a loopback address."""
    parts = addresses.split()
    return bool(parts) and all(_loopback_one(p) for p in parts)


def _loopback_one(text: str) -> bool:
    if text.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(text.strip("[]")).is_loopback
    except ValueError:
        return False  # a name or template: it may well be a network address, so warn


def exposure_warnings(config: AgentConfig, where: Where) -> list[str]:
    """Consul-like warnings for an HTTP/DNS, gossip or script-check setting reachable from the network."""
    out: list[str] = []

    def warn(key: str, reason: str) -> None:
        path, line = where.get(key, ("<defaults>", None))
        out.append(str(ConfigError(path, line, key, reason)))

    listeners = [f"the HTTP API (:{config.ports.http})" if config.ports.http >= 0 else "",
                 f"DNS (:{config.ports.dns})" if config.ports.dns >= 0 else ""]
    exposed = " and ".join(x for x in listeners if x)
    if exposed and not is_loopback(config.client_addr):
        acl = config.acl
        why = ("" if acl.enabled and acl.default_policy == "deny" else
               ", and ACLs are off (any client can register services and write KV)" if not acl.enabled else
               ", and ACLs default to allow (any client without a token can register services and write KV)")
        warn("client_addr", f"{config.client_addr} is not a loopback address: {exposed} can be reached by anyone "
                            f"on the network{why}")
    if config.enable_script_checks and not config.acl.enabled:  # Consul warns only without ACLs
        warn("enable_script_checks", "using enable-script-checks without ACLs is dangerous: any client of the "
                                     "HTTP API can run commands on this host; use enable_local_script_checks "
                                     f"instead, see {SCRIPT_CHECKS_URL}")
    server = config.server or config.dev
    if server and not config.encrypt and config.ports.serf_lan >= 0 and not is_loopback(config.bind_addr):
        rpc = "" if config.tls.cert_file else f" and the server RPC port (:{config.ports.server})"
        warn("bind_addr", f"{config.bind_addr} is not a loopback address and there is no encrypt key: gossip "
                          f"(:{config.ports.serf_lan}){rpc} are plaintext and unauthenticated to anyone on the "
                          "network; set encrypt (meshagent keygen)")
    return out
