"""Helpers for issue 15's cluster acceptance (tests/cluster/test_acl_cluster.py): the `acl {}` file each host
gets, /v1/acl writes made as the management token, and reads made from inside a host's namespace (curl on
127.0.0.1) so they still reach an agent whose link is cut.

Every tool is a real process or a real HTTP request; nothing is mocked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from .cluster_hosts import HTTP_PORT, Host

ANON_ACCESSOR = "00000000-0000-0000-0000-000000000002"
CURL_TIMEOUT_S = 5


def acl_hcl(*, token_ttl: str, down_policy: str = "extend-cache", initial_management: str | None = None,
            agent: str | None = None) -> str:
    """An `acl {}` block under default deny; tokens only when given (a client learns its agent token later
    through `meshagent acl set-agent-token` when `agent` is None)."""
    tokens = []
    if initial_management:
        tokens.append(f'    initial_management = "{initial_management}"')
    if agent:
        tokens.append(f'    agent = "{agent}"')
    block = ["acl {", "  enabled = true", '  default_policy = "deny"', f'  down_policy = "{down_policy}"',
             f'  token_ttl = "{token_ttl}"']
    if tokens:
        block += ["  tokens {", *tokens, "  }"]
    return "\n".join([*block, "}", ""])


def request(host: Host, method: str, path: str, token: str | None, body: Any = None,
            timeout: float = 10.0) -> httpx.Response:
    """One request to the host's agent from the test process with `token` (None: anonymous, no header;
    the cluster's client may carry a default header, which this replaces)."""
    headers = {"X-Consul-Token": token} if token else {}
    client = httpx.Client(trust_env=False, timeout=timeout)
    try:
        return client.request(method, host.http_addr + path, headers=headers,
                              json=body if body is not None else None)
    finally:
        client.close()


def acl_write(host: Host, method: str, path: str, token: str, body: Any = None) -> dict[str, Any]:
    """A /v1/acl write (or read) that must succeed: the decoded body."""
    resp = request(host, method, path, token, body)
    assert resp.status_code == 200, f"{method} {path} on {host.name}: {resp.status_code} {resp.text}"
    out = resp.json()
    assert isinstance(out, dict | bool), out
    return out if isinstance(out, dict) else {"ok": out}


def make_token(host: Host, mgmt: str, name: str, rules: str, secret: str | None = None) -> dict[str, Any]:
    """A policy `name` with `rules` and a token linked to it (with SecretID `secret` when given)."""
    policy = acl_write(host, "PUT", "/v1/acl/policy", mgmt, {"Name": name, "Rules": rules})
    body: dict[str, Any] = {"Description": name, "Policies": [{"ID": policy["ID"]}]}
    if secret:
        body["SecretID"] = secret
    return acl_write(host, "PUT", "/v1/acl/token", mgmt, body)


def set_anonymous_policies(host: Host, mgmt: str, names: list[str]) -> None:
    """Link the anonymous token to exactly these policies (by name)."""
    acl_write(host, "PUT", f"/v1/acl/token/{ANON_ACCESSOR}", mgmt,
              {"AccessorID": ANON_ACCESSOR, "Description": "Anonymous Token",
               "Policies": [{"Name": n} for n in names]})


@dataclass
class Answer:
    """One HTTP answer read with curl inside a namespace."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def ns_get(host: Host, path: str, token: str | None) -> Answer:
    """GET http://127.0.0.1:8500<path> from inside the host's namespace (works while its link is cut)."""
    argv = ["curl", "-s", "-i", "--max-time", str(CURL_TIMEOUT_S)]
    if token:
        argv += ["-H", f"X-Consul-Token: {token}"]
    proc = host.exec([*argv, f"http://127.0.0.1:{HTTP_PORT}{path}"], timeout=CURL_TIMEOUT_S + 5)
    if proc.returncode != 0:
        raise ConnectionError(f"curl on {host.name} {path}: exit {proc.returncode} {proc.stderr.strip()}")
    head, _, body = proc.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    m = re.match(r"HTTP/\S+ (\d{3})", lines[0])
    if m is None:
        raise ConnectionError(f"curl on {host.name} {path}: no status line in {proc.stdout[:200]!r}")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:]) if k}
    return Answer(int(m.group(1)), headers, body)
