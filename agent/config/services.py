"""Service definitions: one parser for config files and HTTP API bodies (snake_case or CamelCase).

Consul behaviour kept here: the id defaults to the name; a connect.sidecar_service block is validated here and
expanded by agent/connect/sidecar.py when registered; the `proxy` block is kept in Consul's CamelCase (sidecar.py
`proxy_from`). The checks inside a service are parsed by check_defs.py.
"""

from __future__ import annotations

from typing import Any

from ..connect.sidecar import check_proxy_service, proxy_from
from .check_defs import CheckContext, check_from
from .errors import Collector, ConfigError, ConfigErrors
from .types import ServiceDefinition, Source, Weights
from .values import (
    ENTERPRISE,
    Later,
    Node,
    blocks,
    fold_map,
    kind_of,
    later,
    node_of,
    one_block,
    plain,
    show,
    string_map,
    typed,
    validate_meta,
)

_SERVICE_KEYS = {
    "name", "service", "id", "tags", "address", "port", "meta", "weights", "check", "checks",
    "enable_tag_override", "kind", "tagged_addresses", "proxy", "connect", "token", "socket_path",
    "locality", "namespace", "partition",
}
_SERVICE_FOLD = fold_map(_SERVICE_KEYS)
# As _CHECK_LATER in check_defs.py.
_SERVICE_LATER: Later = {
    "socket_path": (("",), "not supported yet: services are reached at address and port; remove it"),
    "locality": ((None, {}), "not supported yet: there is no locality-aware routing; remove it"),
    "namespace": (("", "default"), ENTERPRISE),
    "partition": (("", "default"), ENTERPRISE),
}
_KINDS = ("", "typical", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway",
          "api-gateway")


def service_from(col: Collector, data: Any, field_: str, line: int | None = None,
                 sidecar_of: ServiceDefinition | None = None) -> ServiceDefinition | None:
    """Parse and validate one service (and its checks and sidecar); errors and warnings go to `col`."""
    if not isinstance(data, dict):
        col.error(field_, f"must be a block/object, got {kind_of(data)}", line)
        return None
    node = node_of(col, data, field_, line, _SERVICE_FOLD)
    for key in node.raw:
        if key not in _SERVICE_KEYS:
            col.error(f"{field_}.{key}", "unknown field", node.at(key))
        elif key in _SERVICE_LATER:
            later(col, _SERVICE_LATER, f"{field_}.{key}", key, plain(node.raw[key]), node.at(key))
    svc = ServiceDefinition(name=_service_name(col, node, field_, sidecar_of), source=Source(col.path, node.line))
    svc.id = _service_id(col, node, field_, svc.name, sidecar_of)
    _service_scalars(col, node, field_, svc, sidecar_of)
    _service_maps(col, node, field_, svc)
    _service_checks(col, node, field_, svc)
    _service_connect(col, node, field_, svc, sidecar_of)
    check_proxy_service(col, svc, field_, node, sidecar_of)
    return svc


def _service_name(col: Collector, node: Node, field_: str, sidecar_of: ServiceDefinition | None) -> str:
    key = "name" if "name" in node.raw else "service"
    name = node.raw.get(key)
    if sidecar_of is not None and not name:
        return f"{sidecar_of.name}-sidecar-proxy"  # Consul's sidecar default
    if name in (None, ""):
        col.error(f"{field_}.name", "is required", node.line)
        return ""
    return typed(col, f"{field_}.name", name, str, node.at(key)) or ""


def _service_id(col: Collector, node: Node, field_: str, name: str, sidecar_of: ServiceDefinition | None) -> str:
    given = node.raw.get("id")
    if given not in (None, ""):
        return typed(col, f"{field_}.id", given, str, node.at("id")) or name
    return f"{sidecar_of.id}-sidecar-proxy" if sidecar_of is not None else name


def _service_scalars(col: Collector, node: Node, field_: str, svc: ServiceDefinition,
                     sidecar_of: ServiceDefinition | None) -> None:
    raw = node.raw
    if raw.get("tags") is not None:
        tags = raw["tags"]
        if isinstance(tags, list) and all(isinstance(t, str) for t in tags):
            svc.tags = list(tags)
        else:
            col.error(f"{field_}.tags", "must be a list of strings", node.at("tags"))
    if raw.get("address") is not None:
        svc.address = typed(col, f"{field_}.address", raw["address"], str, node.at("address")) or ""
    if raw.get("port") is not None:
        port = typed(col, f"{field_}.port", raw["port"], int, node.at("port"))
        if port is not None and not 0 <= port <= 65535:
            col.error(f"{field_}.port", f"{port} is not a port (0-65535)", node.at("port"))
        elif port is not None:
            svc.port = port
    if raw.get("token") is not None:
        token = raw["token"]
        # never echoed: it is a secret
        if not isinstance(token, str) or len(token) > 256:
            col.error(f"{field_}.token", "must be a string of at most 256 characters", node.at("token"))
        else:
            svc.token = token
    if raw.get("enable_tag_override") is not None:
        value = typed(col, f"{field_}.enable_tag_override", raw["enable_tag_override"], bool,
                      node.at("enable_tag_override"))
        svc.enable_tag_override = bool(value)
    kind = raw.get("kind")
    if kind is not None and kind not in _KINDS:
        col.error(f"{field_}.kind", f"must be one of {', '.join(k for k in _KINDS if k)}, got {show(kind)}",
                  node.at("kind"))
    svc.kind = "" if kind in (None, "typical") or kind not in _KINDS else str(kind)
    if sidecar_of is not None and not svc.kind:
        svc.kind = "connect-proxy"


def _service_maps(col: Collector, node: Node, field_: str, svc: ServiceDefinition) -> None:
    raw = node.raw
    if raw.get("meta") is not None:
        svc.meta = validate_meta(col, f"{field_}.meta", raw["meta"], node.at("meta"))
    if raw.get("weights") is not None:
        _weights(col, raw["weights"], f"{field_}.weights", node.at("weights"), svc)
    if raw.get("tagged_addresses") is not None:
        tagged = string_map(col, f"{field_}.tagged_addresses", raw["tagged_addresses"], node.at("tagged_addresses"))
        for name, addr in (tagged or {}).items():
            if not isinstance(one_block(addr), dict):
                col.error(f"{field_}.tagged_addresses.{name}", "must be a map with address and port",
                          node.at("tagged_addresses"))
                continue
            svc.tagged_addresses[name] = plain(addr)
    if raw.get("proxy") is not None:
        proxy = proxy_from(col, raw["proxy"], f"{field_}.proxy", node.at("proxy"))
        if proxy is not None:
            svc.proxy = proxy


def _weights(col: Collector, value: Any, field_: str, line: int | None, svc: ServiceDefinition) -> None:
    data = one_block(value)
    if not isinstance(data, dict):
        col.error(field_, f"must be a map, got {kind_of(data)}", line)
        return
    node = node_of(col, data, field_, line)
    svc.weights = Weights()
    for key, item in node.raw.items():
        if key not in ("passing", "warning"):
            col.error(f"{field_}.{key}", "unknown field (passing or warning)", node.at(key))
            continue
        number = typed(col, f"{field_}.{key}", item, int, node.at(key))
        if number is not None and number < 1:
            col.error(f"{field_}.{key}", f"must be at least 1, got {number}", node.at(key))
        elif number is not None:
            setattr(svc.weights, key, number)


def _service_checks(col: Collector, node: Node, field_: str, svc: ServiceDefinition) -> None:
    entries: list[tuple[str, Any, int | None]] = []
    if node.raw.get("check") is not None:
        single = blocks(node.raw["check"])
        names = [f"{field_}.check"] if len(single) == 1 else [f"{field_}.check[{i}]" for i in range(len(single))]
        entries += [(name, c, node.at("check")) for name, c in zip(names, single, strict=True)]
    if node.raw.get("checks") is not None:
        entries += [(f"{field_}.checks[{i}]", c, node.at("checks"))
                    for i, c in enumerate(blocks(node.raw["checks"]))]
    for i, (sub, data, line) in enumerate(entries):
        check = check_from(col, data, sub, CheckContext(svc.id, svc.name, i, len(entries), in_service=True), line)
        if check is not None:
            svc.checks.append(check)
    seen: set[str] = set()
    for check in svc.checks:
        if check.id in seen:
            col.error(f"{field_}.checks", f"duplicate check id {check.id!r}", check.source.line)
        seen.add(check.id)


def _service_connect(col: Collector, node: Node, field_: str, svc: ServiceDefinition,
                     sidecar_of: ServiceDefinition | None) -> None:
    if node.raw.get("connect") is None:
        return
    data = one_block(node.raw["connect"])
    sub = f"{field_}.connect"
    if not isinstance(data, dict):
        col.error(sub, f"must be a map, got {kind_of(data)}", node.at("connect"))
        return
    connect = node_of(col, data, sub, node.at("connect"))
    out: dict[str, Any] = {}
    for key, value in connect.raw.items():
        if key == "native":
            native = typed(col, f"{sub}.native", value, bool, connect.at(key))
            if native is not None:
                out["native"] = native
        elif key == "sidecar_service":
            if sidecar_of is not None:
                col.error(f"{sub}.sidecar_service", "a sidecar cannot have its own sidecar", connect.at(key))
                continue
            block = one_block(value) if value != [] else {}
            if service_from(col, block, f"{sub}.sidecar_service", connect.at(key), sidecar_of=svc) is not None:
                out["sidecar_service"] = plain(block)
        else:
            col.error(f"{sub}.{key}", "unknown field (native or sidecar_service)", connect.at(key))
    if out.get("native") and "sidecar_service" in out:
        col.error(sub, "native and sidecar_service are mutually exclusive", connect.line)
    svc.connect = out


def parse_service(data: dict[str, Any], source: Source) -> ServiceDefinition:
    """Parse one service (snake_case or CamelCase keys, as in files or API bodies); raises ConfigErrors."""
    col = Collector(source.path)
    svc = service_from(col, data, "service", source.line)
    if col.errors or svc is None:
        raise ConfigErrors(col.errors or [ConfigError(source.path, source.line, "service", "invalid")])
    return svc
