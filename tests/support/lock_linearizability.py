"""Linearizability of KV lock histories: Consul's `?acquire=`/`?release=` and reads, one key at a time.

The model of one key is its state: absent (None) or (value, holder session or None, LockIndex).

* ``acquire`` (session s, value v): succeeds iff the key is absent (-> (v, s, 1)), free (-> (v, s, n + 1))
  or already held by s (-> (v, s, n): a holder re-acquiring keeps the LockIndex); held by another: False.
* ``release`` (session s, value v): succeeds iff s holds the key (-> (v, None, n)); else False.
* ``get``: returns the state.

The search is Wing & Gong's (as tests/support/linearizability.py, which checks plain registers) without that
module's value-specific reductions, keeping the two exact ones that hold for any model: an operation that
leaves the state unchanged and is legal now is linearized at once, and an operation with an unknown outcome
(`complete is None`: it may take effect at any instant after `invoke`, or never) is only placed where it
succeeds. Search nodes (linearized set, state) are memoized; the search is iterative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tests.support.linearizability import CheckResult, Op

State = tuple[str, str | None, int] | None
INF = math.inf


@dataclass
class LockOp(Op):
    """An `Op` whose kind is acquire, release or get, by the client's `session`."""

    session: str = ""


def step(op: LockOp, state: State) -> tuple[Any, State]:
    """The result `op` gives in `state`, and the state after it."""
    if op.kind == "get":
        return state, state
    value = op.value if op.value is not None else ""
    if op.kind == "acquire":
        if state is None:
            return True, (value, op.session, 1)
        _, holder, index = state
        if holder is None:
            return True, (value, op.session, index + 1)
        if holder == op.session:
            return True, (value, op.session, index)
        return False, state
    if op.kind == "release":
        if state is None or state[1] != op.session:
            return False, state
        return True, (value, None, state[2])
    raise ValueError(f"unknown lock op kind {op.kind!r}")


def check_lock_history(ops: Iterable[LockOp], max_states: int = 1_000_000) -> CheckResult:
    """Check every key's history (keys are independent); the first failing key's account on failure."""
    by_key: dict[str, list[LockOp]] = {}
    for op in ops:
        if op.complete is not None and op.complete < op.invoke:
            raise ValueError(f"op completes before it is invoked: {op}")
        if not (op.kind == "get" and op.complete is None):  # an unknown read says nothing
            by_key.setdefault(op.key, []).append(op)
    total = sum(len(v) for v in by_key.values())
    for key in sorted(by_key):
        key_ops = sorted(by_key[key], key=lambda o: (o.invoke, INF if o.complete is None else o.complete))
        verdict = _search(key_ops, max_states)
        if verdict is not None:
            return CheckResult(ok=False, key=key, explanation=f"key {key!r}: {verdict}\n" + _history(key_ops))
    return CheckResult(ok=True, key=None, explanation=f"linearizable: {total} lock operations on {len(by_key)} keys")


def _search(ops: list[LockOp], max_states: int) -> str | None:
    """None when linearizable, else why not."""
    n = len(ops)
    inv = [op.invoke for op in ops]
    comp = [INF if op.complete is None else op.complete for op in ops]
    known = [op.complete is not None for op in ops]
    required = sum(1 << i for i in range(n) if known[i])
    seen: set[tuple[int, State]] = set()
    stack: list[tuple[int, State]] = [(0, None)]
    deepest = 0
    while stack:
        mask, state = stack.pop()
        # Greedy: known ops that are candidates, legal now and change nothing are placed at once.
        progress = True
        while progress:
            progress = False
            horizon = min((comp[i] for i in range(n) if known[i] and not mask >> i & 1), default=INF)
            for i in range(n):
                if inv[i] > horizon:
                    break
                if mask >> i & 1 or not known[i]:
                    continue
                result, after = step(ops[i], state)
                if after == state and result == ops[i].result:
                    mask |= 1 << i
                    progress = True
        if mask & required == required:
            return None
        if (mask, state) in seen:
            continue
        seen.add((mask, state))
        if len(seen) > max_states:
            return f"search too large ({max_states} states): NOT shown to be linearizable"
        deepest = max(deepest, bin(mask & required).count("1"))
        horizon = min((comp[i] for i in range(n) if known[i] and not mask >> i & 1), default=INF)
        for i in range(n):
            if inv[i] > horizon:
                break
            if mask >> i & 1:
                continue
            result, after = step(ops[i], state)
            if known[i] and result != ops[i].result:
                continue
            if not known[i] and result is not True:
                continue  # an unknown outcome placed where it fails is the same as never
            stack.append((mask | 1 << i, after))
    return f"not linearizable: at most {deepest} of {bin(required).count('1')} completed operations could be placed"


def _history(ops: list[LockOp], limit: int = 120) -> str:
    lines = []
    for op in ops[:limit]:
        done = "?" if op.complete is None else f"{op.complete:.4f}"
        lines.append(f"  {op.client} {op.kind} {op.session[:8]} value={op.value} [{op.invoke:.4f}, {done}] "
                     f"-> {op.result!r}")
    if len(ops) > limit:
        lines.append(f"  ... {len(ops) - limit} more")
    return "\n".join(lines)
