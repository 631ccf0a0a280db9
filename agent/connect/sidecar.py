"""Connect proxy definitions: the `proxy { }` block in canonical (Consul API JSON) form, and sidecar expansion.

Pure. `proxy_from` validates a proxy block (snake_case or CamelCase) into CamelCase keys as Consul's API
renders them; `expand_sidecar` turns a parent's `connect { sidecar_service { } }` into the proxy's own
service definition with Consul's defaults (id/name suffix, inherited tags and meta, a port from
SIDECAR_PORT_RANGE or ports.sidecar_min_port/max_port, the local service address and port, the "Connect
Sidecar Listening" TCP check and the "Connect Sidecar Aliasing <parent id>" alias check).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..config.encode import camel_keys
from ..config.errors import Collector, ConfigError, ConfigErrors
from ..config.types import CheckDefinition, ServiceDefinition, Source
from ..config.values import Node, kind_of, node_of, one_block, plain, show, typed
from .proxy_config_read import listening_target

SIDECAR_PORT_RANGE = (21000, 21255)  # Consul's default sidecar_min_port and sidecar_max_port
SIDECAR_SUFFIX = "-sidecar-proxy"
PROXY_KIND = "connect-proxy"
MAX_UPSTREAMS = 256
_MODES = ("", "direct", "transparent")
_DEST_TYPES = ("service", "prepared_query")
_STRINGS = {"destination_service_name": "DestinationServiceName",
            "destination_service_id": "DestinationServiceID",
            "local_service_address": "LocalServiceAddress"}
_UPSTREAM_STRINGS = {"destination_name": "DestinationName", "datacenter": "Datacenter",
                     "local_bind_address": "LocalBindAddress"}


def sidecar_id(parent_id: str) -> str:
    """The only id a sidecar of `parent_id` may have (Consul manages its lifecycle by it)."""
    return parent_id + SIDECAR_SUFFIX


def _port(col: Collector, field_: str, value: Any, line: int | None) -> int | None:
    port = typed(col, field_, value, int, line)
    if port is not None and not 1 <= port <= 65535:
        col.error(field_, f"{port} is not a port (1-65535)", line)
        return None
    return int(port) if port is not None else None


def _opaque_map(col: Collector, field_: str, value: Any, line: int | None) -> dict[str, Any] | None:
    data = plain(one_block(value), opaque=True)
    if not isinstance(data, dict):
        col.error(field_, f"must be a map, got {kind_of(data)}", line)
        return None
    return data


def proxy_from(col: Collector, data: Any, field_: str, line: int | None) -> dict[str, Any] | None:
    """Validate one `proxy` block; return it with Consul's CamelCase keys, or None after an error."""
    data = one_block(data)
    if not isinstance(data, dict):
        col.error(field_, f"must be a map, got {kind_of(data)}", line)
        return None
    node = node_of(col, data, field_, line)
    out: dict[str, Any] = {}
    for key, value in node.raw.items():
        sub, at = f"{field_}.{key}", node.at(key)
        if value is None:
            continue
        if key in _STRINGS:
            text = typed(col, sub, value, str, at)
            if text:
                out[_STRINGS[key]] = text
        elif key == "local_service_port":
            port = _port(col, sub, value, at)
            if port is not None:
                out["LocalServicePort"] = port
        elif key == "mode":
            if value not in _MODES:
                col.error(sub, f"must be direct or transparent, got {show(value)}", at)
            elif value:
                out["Mode"] = value
        elif key == "config":
            config = _opaque_map(col, sub, value, at)
            if config:
                out["Config"] = config
        elif key == "upstreams":
            ups = _upstreams(col, sub, value, at)
            if ups:
                out["Upstreams"] = ups
        elif key in ("mesh_gateway", "expose"):
            block = plain(one_block(value))
            if not isinstance(block, dict):
                col.error(sub, f"must be a map, got {kind_of(block)}", at)
            else:
                out["MeshGateway" if key == "mesh_gateway" else "Expose"] = camel_keys(block)
        else:
            col.error(sub, "unknown field (destination_service_name, destination_service_id, "
                      "local_service_address, local_service_port, mode, config, upstreams, mesh_gateway, expose)", at)
    out.setdefault("MeshGateway", {})
    out.setdefault("Expose", {})
    return out


def _upstreams(col: Collector, field_: str, value: Any, line: int | None) -> list[dict[str, Any]]:
    items: list[Any] = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        col.error(field_, f"must be a list of blocks, got {kind_of(value)}", line)
        return []
    flat: list[Any] = []
    for item in items:  # HCL gives repeated blocks as lists (of lists)
        flat.extend(item if isinstance(item, list) else [item])
    if len(flat) > MAX_UPSTREAMS:
        col.error(field_, f"at most {MAX_UPSTREAMS} upstreams, got {len(flat)}", line)
        return []
    out = []
    for i, item in enumerate(flat):
        upstream = _upstream(col, f"{field_}[{i}]", item, line)
        if upstream is not None:
            out.append(upstream)
    return out


def _upstream(col: Collector, field_: str, data: Any, line: int | None) -> dict[str, Any] | None:
    if not isinstance(data, dict):
        col.error(field_, f"must be a block/object, got {kind_of(data)}", line)
        return None
    node = node_of(col, data, field_, line)
    out: dict[str, Any] = {"DestinationType": "service"}
    errors = len(col.errors)
    for key, value in node.raw.items():
        sub, at = f"{field_}.{key}", node.at(key)
        if value is None:
            continue
        if key in _UPSTREAM_STRINGS:
            text = typed(col, sub, value, str, at)
            if text:
                out[_UPSTREAM_STRINGS[key]] = text
        elif key == "destination_type":
            if value not in _DEST_TYPES:
                col.error(sub, f"must be service or prepared_query, got {show(value)}", at)
            else:
                out["DestinationType"] = value
        elif key == "local_bind_port":
            port = _port(col, sub, value, at)
            if port is not None:
                out["LocalBindPort"] = port
        elif key == "config":
            config = _opaque_map(col, sub, value, at)
            if config:
                out["Config"] = config
        elif key == "mesh_gateway":
            block = plain(one_block(value))
            if not isinstance(block, dict):
                col.error(sub, f"must be a map, got {kind_of(block)}", at)
            else:
                out["MeshGateway"] = camel_keys(block)
        else:
            col.error(sub, "unknown field (destination_type, destination_name, datacenter, local_bind_address, "
                      "local_bind_port, config, mesh_gateway)", at)
    if "DestinationName" not in out:
        col.error(f"{field_}.destination_name", "is required", node.line)
    if "LocalBindPort" not in out and "local_bind_port" not in node.raw:
        col.error(f"{field_}.local_bind_port", "is required", node.line)
    out.setdefault("MeshGateway", {})
    return out if len(col.errors) == errors else None


def check_proxy_service(col: Collector, svc: ServiceDefinition, field_: str, node: Node,
                        sidecar_of: ServiceDefinition | None) -> None:
    """The rules a connect-proxy service (standalone or sidecar) must follow; `node` is its raw keys."""
    given = node.raw
    if sidecar_of is not None:
        want = sidecar_id(sidecar_of.id)
        if given.get("id") not in (None, "") and given["id"] != want:
            col.error(f"{field_}.id", f"a sidecar's id is always {want!r} (Consul manages it by that id), "
                      f"got {show(given['id'])}", node.at("id"))
        if given.get("kind") not in (None, "", PROXY_KIND):
            col.error(f"{field_}.kind", f"a sidecar's kind is always {PROXY_KIND!r}, got {show(given['kind'])}",
                      node.at("kind"))
        return
    if svc.kind != PROXY_KIND:
        return
    if not svc.proxy.get("DestinationServiceName"):
        col.error(f"{field_}.proxy.destination_service_name", "is required for kind = \"connect-proxy\"",
                  node.at("proxy"))
    if not svc.port:
        col.error(f"{field_}.port", "is required for kind = \"connect-proxy\" (1-65535)", node.at("port"))


def pick_port(used: Iterable[int], previous: int | None = None,
              port_range: tuple[int, int] = SIDECAR_PORT_RANGE) -> int | None:
    """A sidecar port from `port_range` (ports.sidecar_min_port/max_port) not in `used`, keeping `previous`
    when it is still free; None when none is free or the range is off (a 0 in it, as in Consul)."""
    taken = set(used)
    low, high = port_range
    if low <= 0 or high <= 0:
        return None
    if previous is not None and low <= previous <= high and previous not in taken:
        return previous
    return next((p for p in range(low, high + 1) if p not in taken), None)


def expand_sidecar(defn: ServiceDefinition, used_ports: Iterable[int], previous_port: int | None = None,
                   port_range: tuple[int, int] = SIDECAR_PORT_RANGE,
                   listen_address: str = "127.0.0.1") -> ServiceDefinition | None:
    """The sidecar service `defn`'s connect.sidecar_service asks for (None when it has none);
    raises ConfigErrors when the block is invalid or no port in `port_range` is free. `listen_address` is
    where the agent's data plane binds a sidecar without an address of its own: its listening check dials it."""
    block = defn.connect.get("sidecar_service")
    if block is None:
        return None
    from ..config.services import service_from  # services.py imports this module

    col = Collector(defn.source.path)
    field_ = f"service {defn.id!r}.connect.sidecar_service"
    side = service_from(col, dict(block), field_, defn.source.line, sidecar_of=defn)
    if col.errors or side is None:
        raise ConfigErrors(col.errors or [ConfigError(defn.source.path, defn.source.line, field_, "invalid")])
    given = node_of(col, dict(block), field_, defn.source.line).raw
    side.id, side.kind = sidecar_id(defn.id), PROXY_KIND
    if "tags" not in given:
        side.tags = list(defn.tags)
    if "meta" not in given:
        side.meta = dict(defn.meta)
    if not side.port:
        port = pick_port(used_ports, previous_port, port_range)
        if port is None:
            low, high = port_range
            reason = (f"no free sidecar port left in {low}-{high}" if low > 0 and high > 0 else
                      "is required: automatic sidecar ports are off (ports.sidecar_min_port/sidecar_max_port 0)")
            raise ConfigErrors([ConfigError(defn.source.path, defn.source.line, f"{field_}.port", reason)])
        side.port = port
    proxy = dict(side.proxy) or {"MeshGateway": {}, "Expose": {}}
    proxy.setdefault("DestinationServiceName", defn.name)
    proxy.setdefault("DestinationServiceID", defn.id)
    proxy.setdefault("LocalServiceAddress", "127.0.0.1")
    if defn.port:
        proxy.setdefault("LocalServicePort", defn.port)
    side.proxy = proxy
    if not side.checks:
        # Consul's defaults: the public listener answering, and the parent's health mirrored (an alias
        # check), so a sidecar in front of a failing service is not used. The listening check dials where
        # our data plane binds (proxy_config_read.public_bind), not the parent's address as Consul does.
        target = listening_target(proxy.get("Config"), side.address, side.port, listen_address)
        source = Source(defn.source.path, defn.source.line)
        side.checks = [CheckDefinition(id=f"service:{side.id}:1", name="Connect Sidecar Listening",
                                       service_id=side.id, tcp=target, interval=10.0, source=source),
                       CheckDefinition(id=f"service:{side.id}:2", name=f"Connect Sidecar Aliasing {defn.id}",
                                       service_id=side.id, alias_service=defn.id, source=source)]
    side.source = defn.source
    return side


def sidecar_for(defn: ServiceDefinition, services: Mapping[str, ServiceDefinition],
                port_range: tuple[int, int] = SIDECAR_PORT_RANGE,
                listen_address: str = "127.0.0.1") -> ServiceDefinition | None:
    """Expand `defn`'s sidecar against the agent's local `services`: skip ports other local proxies hold and
    keep the port the sidecar already has when it is still free (so a reload does not move it)."""
    if defn.connect.get("sidecar_service") is None:
        return None  # most services: no scan over the others
    sid = sidecar_id(defn.id)
    used = [s.port for key, s in services.items() if key != sid and s.kind == PROXY_KIND and s.port]
    current = services.get(sid)
    return expand_sidecar(defn, used, current.port if current is not None else None, port_range, listen_address)


def sidecar_ids(services: Iterable[ServiceDefinition]) -> set[str]:
    """The ids of the sidecars these services ask for."""
    return {sidecar_id(s.id) for s in services if s.connect.get("sidecar_service") is not None}
