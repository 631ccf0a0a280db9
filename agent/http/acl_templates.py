"""Consul's builtin templated policies (read-only): what `/v1/acl/templated-policies` lists.

Tokens here take service and node identities (which expand to the same rules: agent/acl/rules.py); the
templates are listed so that tools reading them find Consul's names and texts.
"""

from __future__ import annotations

from typing import Any

_NAME_SCHEMA = (
    '{\n\t"type": "object",\n\t"properties": {\n\t\t"name": { "type": "string", "$ref": '
    '"#/definitions/min-length-one" }\n\t},\n\t"required": ["name"],\n\t"definitions": {\n\t\t'
    '"min-length-one": {\n\t\t\t\t"type": "string",\n\t\t\t\t"minLength": 1\n\t\t}\n\t}\n}'
)

# name -> (schema, template, description)
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "builtin/service": (
        _NAME_SCHEMA,
        '\nservice "{{.Name}}" {\n\tpolicy = "write"\n}\nservice "{{.Name}}-sidecar-proxy" {\n\tpolicy = "write"\n}'
        '\nservice_prefix "" {\n\tpolicy = "read"\n}\nnode_prefix "" {\n\tpolicy = "read"\n}',
        "Gives the token or role permissions to register a service and discover services in the Consul "
        "catalog. It also gives the specified service's sidecar proxy the permission to discover and route "
        "traffic to other services.",
    ),
    "builtin/node": (
        _NAME_SCHEMA,
        '\nnode "{{.Name}}" {\n\tpolicy = "write"\n}\nservice_prefix "" {\n\tpolicy = "read"\n}',
        "Gives the token or role permissions for a register an agent/node into the catalog. A node is "
        "typically a consul agent but can also be a physical server, cloud instance or a container.",
    ),
    "builtin/dns": (
        "",
        '\nnode_prefix "" {\n\tpolicy = "read"\n}\nservice_prefix "" {\n\tpolicy = "read"\n}'
        '\nquery_prefix "" {\n\tpolicy = "read"\n}',
        "Gives the token or role permissions for the Consul DNS to query services in the network.",
    ),
}


def template_json(name: str) -> dict[str, Any]:
    """Consul's JSON for one templated policy."""
    schema, template, description = TEMPLATES[name]
    return {"TemplateName": name, "Schema": schema, "Template": template, "Description": description}
