"""Token resolution on a client, in process: the real ACLResolver over a real client catalog (fed the feed's
redacted ACL commands: digests, no secrets; 100 db instances registered), cached against uncached.

    .venv/bin/python bench/acl/resolve.py [--cached 200000] [--changes 300]

- cached: the same secret resolved again (the identity memo, the request path's steady state);
- index moved: an unrelated token written first (the ACL index moves, so identities are rebuilt from
  the parsed-policy cache: lookup + authorizer build, no parse);
- policy changed: the token's own policy rewritten first (new ModifyIndex: parse + build), for a small
  policy (2 rules) and a large one (200 rules).
The cached rows are the mean over the loop; each uncached figure is the first resolve after the write plus
the first decision (service:read on db), what the first request after the change pays.
Printed as µs per resolve (median and p99).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from machine import machine_info  # noqa: E402  (bench/machine.py, shared by the bench scripts)
from meshagent.agent.acl.objects import Link, Policy, Token  # noqa: E402
from meshagent.agent.acl.resolver import ACLResolver  # noqa: E402
from meshagent.agent.catalog import commands  # noqa: E402
from meshagent.agent.catalog.acl_state import redacted_acl_command  # noqa: E402
from meshagent.agent.catalog.model import PASSING, Check, Node, Service  # noqa: E402
from meshagent.agent.config.types import AgentConfig  # noqa: E402
from meshagent.agent.store import CatalogStore  # noqa: E402

SMALL_RULES = 'service "db" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def large_rules(n: int = 200) -> str:
    """`n` rules: service and key prefixes, as a big team policy has."""
    lines = [f'service_prefix "svc-{i}-" {{ policy = "read" }}\nkey_prefix "team/{i}/" {{ policy = "write" }}'
             for i in range(n // 2)]
    return SMALL_RULES + "\n".join(lines) + "\n"


class ClientCatalog:
    """A client agent's catalog as the feed leaves it, and its resolver (replica current: not stale)."""

    def __init__(self, instances: int = 100) -> None:
        cfg = AgentConfig(node_name="client-1", datacenter="dc1", server=False)
        cfg.acl.enabled = True
        cfg.acl.default_policy = cfg.acl_default_policy = "deny"
        self.store = CatalogStore()
        self.apply(commands.acl_init(str(uuid.uuid4())))
        for i in range(instances):
            node = Node(node=f"node-{i}", address=f"10.0.{i // 250}.{i % 250 + 1}")
            svc = Service(node=node.node, id=f"db-{i}", service="db", port=5432)
            check = Check(node=node.node, check_id=f"db-{i}-alive", status=PASSING, service_id=svc.id,
                          service_name="db")
            self.apply(commands.register(node, svc, [check]))
        self.resolver = ACLResolver(cfg, self.store, clock=time.monotonic)

    def apply(self, cmd: dict[str, object]) -> None:
        """What the client's replica does with a feed frame (ACL commands arrive redacted)."""
        self.store.catalog.apply(self.store.catalog.last_index + 1, redacted_acl_command(dict(cmd)))

    def token(self, name: str, rules: str) -> tuple[str, Policy]:
        """A policy and a token linked to it: (secret, policy)."""
        policy = Policy(id=str(uuid.uuid4()), name=name, rules=rules)
        self.apply(commands.acl_policy_set(policy))
        secret = str(uuid.uuid4())
        self.apply(commands.acl_token_set(Token(accessor_id=str(uuid.uuid4()), secret_id=secret,
                                                policies=(Link(policy.id, ""),))))
        return secret, policy


def first_use(c: ClientCatalog, secret: str) -> float:
    """Seconds for a resolve and its first decision."""
    t0 = time.perf_counter()
    identity = c.resolver.resolve(secret)
    allowed = identity.authorizer.service_read("db").allowed
    took = time.perf_counter() - t0
    assert allowed
    return took


def cached(c: ClientCatalog, secret: str, n: int, decide: bool) -> float:
    """Seconds per resolve (and decision, with `decide`) once memoised."""
    first_use(c, secret)
    resolve = c.resolver.resolve
    t0 = time.perf_counter()
    if decide:
        for _ in range(n):
            resolve(secret).authorizer.service_read("db")
    else:
        for _ in range(n):
            resolve(secret)
    return (time.perf_counter() - t0) / n


def after_index_move(c: ClientCatalog, secret: str, n: int) -> list[float]:
    """Each: an unrelated token written, then the first use of `secret`."""
    out = []
    for _ in range(n):
        c.apply(commands.acl_token_set(Token(accessor_id=str(uuid.uuid4()), secret_id=str(uuid.uuid4()))))
        out.append(first_use(c, secret))
    return out


def after_policy_change(c: ClientCatalog, secret: str, policy: Policy, n: int) -> list[float]:
    """Each: the token's own policy rewritten (description only: a new ModifyIndex), then the first use."""
    out = []
    for i in range(n):
        c.apply(commands.acl_policy_set(Policy(id=policy.id, name=policy.name, rules=policy.rules,
                                               description=f"rev {i}")))
        out.append(first_use(c, secret))
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(cached_n: int, changes: int) -> list[str]:
    """The figures as printed lines."""
    c = ClientCatalog()
    small, small_policy = c.token("db-reader", SMALL_RULES)
    large, large_policy = c.token("team", large_rules())
    lines = [f"token resolution on a client (in process, ACLResolver over a client catalog; "
             f"{cached_n} cached, {changes} per uncached case)"]

    def row(label: str, seconds: list[float]) -> str:
        return (f"  {label:<40}: median {statistics.median(seconds) * 1e6:8.1f} µs   "
                f"p99 {pct(seconds, 99) * 1e6:8.1f} µs")

    per = cached(c, small, cached_n, decide=False)
    lines.append(f"  {'cached: resolve':<40}: {per * 1e6:8.2f} µs per resolve")
    per = cached(c, small, cached_n, decide=True)
    lines.append(f"  {'cached: resolve + decision':<40}: {per * 1e6:8.2f} µs per resolve + service:read")
    lines.append(row("uncached: ACL index moved", after_index_move(c, small, changes)))
    lines.append(row("uncached: policy changed (2 rules)", after_policy_change(c, small, small_policy, changes)))
    lines.append(row("uncached: policy changed (200 rules)",
                     after_policy_change(c, large, large_policy, max(1, changes // 10))))
    counters = c.resolver.counters()
    lines.append(f"  resolver counters: {counters}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached", type=int, default=200_000)
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    print(f"machine: {machine_info()}")
    print("\n".join(report(args.cached, args.changes)))


if __name__ == "__main__":
    main()
