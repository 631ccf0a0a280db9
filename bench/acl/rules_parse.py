"""ACL Rules parsing: python-hcl2 (the reference path) against the linear reader, and what an agent pays
when a policy's rules change (the FSM's check on apply + the resolver's first use, sharing one parse).

    .venv/bin/python bench/acl/rules_parse.py [--rounds 5]

Sizes: 2 rules, 200 rules (bench/acl/resolve.py's team policy), 1000 rules in about 60 KiB (the bounds),
in HCL and in JSON. Printed as the best of `rounds`, in ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from machine import machine_info  # noqa: E402
from meshagent.agent.acl import rules  # noqa: E402
from meshagent.agent.acl.objects import Policy  # noqa: E402
from meshagent.agent.catalog import commands  # noqa: E402
from resolve import SMALL_RULES, ClientCatalog, first_use, large_rules  # noqa: E402


def bounds_rules() -> str:
    """1000 rules, about 60 KiB: what MAX_RULES and MAX_RULES_TEXT allow."""
    return SMALL_RULES + "".join(f'service_prefix "svc-{i}-padding-padding-" {{ policy = "read" }}\n'
                   f'key_prefix "team/{i}/padding/padding/" {{ policy = "write" }}\n' for i in range(499))


def as_json(text: str) -> str:
    tree: dict[str, dict[str, dict[str, str]]] = {}
    for r in rules.parse_rules(text).named:
        tree.setdefault(r.resource + ("_prefix" if r.prefix else ""), {})[r.name] = {"policy": r.access.name.lower()}
    return json.dumps(tree, indent=1)


def best(rounds: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        rules._cache.clear()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def rules_change(c: ClientCatalog, secret: str, policy: Policy, text: str, rounds: int) -> float:
    """Best ms of: the policy's rules rewritten (new text: trailing blanks), applied, then the first use."""
    times = []
    for i in range(rounds):
        changed = Policy(id=policy.id, name=policy.name, rules=text + " " * (i + 1))
        t0 = time.perf_counter()
        c.apply(commands.acl_policy_set(changed))
        first_use(c, secret)
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine_info()}")
    c = ClientCatalog(instances=1)
    cases = [("2 rules", SMALL_RULES), ("200 rules", large_rules()), ("1000 rules", bounds_rules())]
    print(f"{'policy':<22} {'bytes':>6} {'python-hcl2':>12} {'linear':>8} {'apply+first use':>16}   (ms, best of "
          f"{args.rounds})")
    for label, text in cases:
        for form, body in (("HCL", text), ("JSON", as_json(text))):
            slow = best(args.rounds, lambda body=body: rules.parse_rules_slow(body))  # type: ignore[misc]
            fast = best(args.rounds, lambda body=body: rules.parse_rules_uncached(body))  # type: ignore[misc]
            secret, policy = c.token(f"p-{uuid.uuid4().hex[:8]}", body)
            change = rules_change(c, secret, policy, body, args.rounds)
            print(f"{label + ' ' + form:<22} {len(body):>6} {slow:>12.2f} {fast:>8.2f} {change:>16.2f}")


if __name__ == "__main__":
    main()
