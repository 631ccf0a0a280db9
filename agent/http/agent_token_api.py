"""`PUT /v1/agent/token/<type>`: replace one of the agent's own ACL tokens at run time (Consul's set-agent-token).

Needs acl:write. With `acl.enable_token_persistence` the value is also written to the data dir's
acl-tokens.json (0600, atomic; local_persist.AgentTokenFile) and wins over the config at the next start.
Secrets are never logged nor echoed: the log line names the type only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..acl.identity import require
from .agent_api import body_json
from .messages import Request, Response
from .query import HTTPError, Query, bad_request

if TYPE_CHECKING:
    from .api import API

log = logging.getLogger("meshagent.http")

MAX_SECRET_LEN = 256
# Consul's names for each type, old and new -> ACLTokens' field (and acl-tokens.json's key).
TOKEN_TYPES = {
    "default": "default", "acl_token": "default",
    "agent": "agent", "acl_agent_token": "agent",
    "agent_recovery": "agent_recovery", "agent_master": "agent_recovery", "acl_agent_master_token": "agent_recovery",
    "replication": "replication", "acl_replication_token": "replication",
    "config_file_service_registration": "config_file_service_registration",
}
# Changing these changes what anti-entropy writes as: Consul triggers a full sync.
_SYNC_TYPES = ("default", "agent", "config_file_service_registration")


def _token_from(body: Any) -> str:
    if not isinstance(body, dict):
        raise bad_request("Request decode failed: body must be a JSON object with a Token field")
    token = body.get("Token", "")
    if token is None:
        token = ""
    if not isinstance(token, str):
        raise bad_request("Request decode failed: Token must be a string")
    if len(token) > MAX_SECRET_LEN:
        raise bad_request(f"Request decode failed: Token is longer than {MAX_SECRET_LEN} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise bad_request("Request decode failed: Token holds whitespace or control characters")
    return token


async def set_token(api: API, request: Request, query: Query, arg: str) -> Response:
    """PUT /v1/agent/token/<type> {"Token": "..."}: 200 with an empty body, as Consul."""
    resolver = api.agent.acl
    if not resolver.enabled:
        raise HTTPError(401, "ACL support disabled")
    identity = api.identity(request)
    require(identity, identity.authorizer.acl_write())
    token = _token_from(body_json(request))
    field = TOKEN_TYPES.get(arg)
    if field is None:
        shown = arg[:64].encode("unicode_escape").decode("ascii").replace('"', '\\"')
        raise HTTPError(404, f'Token "{shown}" is unknown')
    setattr(resolver.tokens, field, token)
    token_file = getattr(api.agent, "acl_token_file", None)
    if token_file is not None and api.agent.config.acl.enable_token_persistence:
        try:
            await token_file.save(field, token)
        except OSError as exc:
            log.error("could not persist the agent's ACL token %r: %s", field, exc.strerror)
            raise HTTPError(500, f"Failed to persist tokens: {exc.strerror}") from None
    if field in _SYNC_TYPES:
        local = getattr(api.agent, "local", None)
        sync = getattr(local, "sync", None)
        if sync is not None:
            sync.tokens_changed()  # the anti-entropy loop syncs within a second, as the new token
    log.info("Updated agent's ACL token %r", field)
    return 200, [], b""
