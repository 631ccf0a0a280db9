"""ACL vetting of `/v1/agent/*` writes (Consul's vetServiceRegister, vetServiceUpdate, vetCheckRegister and
vetCheckUpdate), and this agent's own rule for script checks registered over HTTP."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..acl.identity import require
from ..config.errors import ConfigErrors
from ..connect.sidecar import PROXY_KIND, expand_sidecar
from .acl_gate import acl_identity, require_acl
from .messages import Request

if TYPE_CHECKING:
    from ..acl.identity import ACLIdentity
    from ..config.types import CheckDefinition, ServiceDefinition
    from .api import API


def vet_check_update(api: API, request: Request, check_id: str) -> None:
    """service:write on a service check's service, node:write on this node for a node check (Consul's
    vetCheckUpdate); an unknown ID is left to local state (its own 404 or no-op)."""
    identity = acl_identity(api, request)
    if identity is None:
        return
    check = api.agent.local.checks().get(check_id)
    if check is not None:
        vet_check_target(api, identity, check.service_id, check.service_name)


def vet_check_target(api: API, identity: ACLIdentity, service_id: str, service_name: str) -> None:
    authz = identity.authorizer
    if service_id:
        if not service_name:
            svc = api.agent.local.services().get(service_id)
            service_name = svc.name if svc is not None else ""
        if service_name:  # an unknown service: local state refuses the check ("does not exist")
            require(identity, authz.service_write(service_name))
    else:
        require(identity, authz.node_write(api.agent.node_name))


def vet_scripts(api: API, identity: ACLIdentity, checks: list[CheckDefinition]) -> None:
    """Script checks registered over HTTP run commands on this host: agent:write on this node too (on top of
    enable_script_checks), a rule Consul does not have."""
    if any(c.type == "script" for c in checks):
        require(identity, identity.authorizer.agent_write(api.agent.node_name))


def vet_service_register(api: API, request: Request, defn: ServiceDefinition) -> None:
    """Consul's vetServiceRegister: service:write on the name, on a service it replaces by ID, on a
    connect-proxy's destination; the same for the sidecar it asks for; agent:write for script checks."""
    identity = acl_identity(api, request)
    if identity is None:
        return
    authz = identity.authorizer
    local = api.agent.local.services()
    services = [defn]
    try:
        # Expanded for its name and destination only: with no port taken it always gets one, so only an
        # invalid block fails, and local state refuses that registration with the reason.
        sidecar = expand_sidecar(defn, ())
    except ConfigErrors:
        sidecar = None
    if sidecar is not None:
        services.append(sidecar)
    for svc in services:
        require(identity, authz.service_write(svc.name))
        replaced = local.get(svc.id)
        if replaced is not None and replaced.name != svc.name:
            require(identity, authz.service_write(replaced.name))
        destination = svc.proxy.get("DestinationServiceName") if svc.kind == PROXY_KIND else None
        if isinstance(destination, str) and destination:
            require(identity, authz.service_write(destination))
        vet_scripts(api, identity, svc.checks)


def vet_service_update(api: API, request: Request, service_id: str) -> None:
    """service:write on a local service's name; an unknown ID is local state's (no-op or 404), once the token
    resolved (an invalid one is refused whether or not the ID exists)."""
    acl_identity(api, request)
    defn = api.agent.local.services().get(service_id)
    if defn is not None:
        require_acl(api, request, lambda a: a.service_write(defn.name))
