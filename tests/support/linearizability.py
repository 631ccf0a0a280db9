"""Linearizability checking for histories of a KV store of registers (Wing & Gong, with Lowe's refinements).

A history is a list of `Op`s as seen by clients: when each request was sent (`invoke`), when its answer
arrived (`complete`, or None when the outcome is unknown: timeout, lost connection) and what it answered.
`check_history` decides whether some total order of the operations exists that

* respects real time: if `a.complete < b.invoke` then `a` takes effect before `b`, and
* is a legal sequential execution of one register per key, starting from `initial`.

Model, per key (keys are independent registers, so each key is checked on its own: P-compositionality):

* ``put``  sets the value; always succeeds.
* ``cas``  sets the value to `value` iff the current value equals `expected` (None = key absent). A
  completed cas answered True needs current == expected; answered False it changes nothing and needs
  current != expected.
* ``get``  returns the current value (None = absent).
* A write with an unknown outcome (`complete is None`) may take effect at any instant after `invoke`, or
  never; if it takes effect, a cas does whatever the state at that instant dictates. A get with an unknown
  outcome says nothing and is dropped.

Ties: a completion and an invocation at exactly the same timestamp count as concurrent (no real-time
order), so coarse clocks never produce false alarms.

Algorithm: depth-first "just-in-time linearization" search (Wing & Gong; Lowe, "Testing for
linearizability", 2017). At each step the candidates are the operations not yet linearized whose invoke is
<= the earliest completion among the operations not yet linearized; a node of the search is the pair
(set of linearized operations as an int bitmask, register value) and is memoized so that no node is
explored twice. Exact reductions (each checked against a brute-force search in the tests) keep it small:

* an operation that does not change the state (a get, or a cas answered False) and that can be linearized
  right now is linearized at once without branching: placing it earlier can never hurt;
* an unknown-outcome cas is only ever placed where it succeeds (a failing one is the same as "never");
* the current value may not be overwritten while a completed get/successful cas that needs it is still
  unplaced and no op left can write that value again (with unique values: the value is gone for good);
* an unknown-outcome write of a value no op ever looks for is only placed where a failed cas needs the
  value to change (anywhere else it could only be skipped or harm).
Candidate writes are tried earliest-completion first, unknown outcomes last.

The search succeeds as soon as every completed operation is linearized (the unknown-outcome writes left
over simply never took effect). It is iterative, so history length is not bounded by the recursion limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CheckResult", "Op", "check_history"]

INF = math.inf

# Per-operation step codes used by the search.
_READ = 0       # completed get: legal iff state == result; state unchanged
_CAS_FAIL = 1   # completed cas answered False: legal iff state != expected; state unchanged
_PUT = 2        # put (completed or unknown outcome): always legal; state := value
_CAS_OK = 3     # cas answered True, or cas with unknown outcome: placed only where state == expected

_PREFIX_LINES = 40      # explanation: at most this many ops of the linearizable prefix (the last ones)
_HISTORY_LINES = 120    # explanation: at most this many ops of the key's history (around the failure)


@dataclass
class Op:
    """One client request on one key."""

    client: str                   # who issued it (the ops of one client never overlap)
    kind: Literal["put", "cas", "get"]
    key: str
    value: str | None = None      # put/cas: the new value
    expected: str | None = None   # cas: the value the key must hold (None = the key must be absent)
    invoke: float = 0.0           # time the request was sent
    complete: float | None = None  # time the answer arrived; None = unknown outcome
    result: Any = None            # get: value or None (absent); cas: True/False; put: True. Ignored if unknown.


@dataclass
class CheckResult:
    ok: bool
    key: str | None               # first key (in sorted order) that is not linearizable
    explanation: str              # for a failure: a readable account of that key's history and the search


def check_history(ops: Iterable[Op], initial: dict[str, str | None] | None = None,
                  max_states: int = 2_000_000) -> CheckResult:
    """Check that `ops` is linearizable; keys absent from `initial` start absent (None).

    `max_states` bounds the number of distinct search nodes per key; a search that exceeds it fails
    (ok=False, "search too large") rather than passing by giving up.
    """
    ops = list(ops)
    for op in ops:
        _validate(op)
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    initial = initial or {}
    for key in sorted(by_key):
        result = _check_key(key, by_key[key], initial.get(key), max_states)
        if not result.ok:
            return result
    return CheckResult(ok=True, key=None,
                       explanation=f"linearizable: {len(ops)} operations on {len(by_key)} keys")


def _validate(op: Op) -> None:
    if op.kind not in ("put", "cas", "get"):
        raise ValueError(f"unknown op kind {op.kind!r}: {op}")
    if op.kind in ("put", "cas") and op.value is None:
        raise ValueError(f"{op.kind} needs a value: {op}")
    if op.complete is not None:
        if op.complete < op.invoke:
            raise ValueError(f"op completes before it is invoked: {op}")
        if op.kind == "cas" and op.result not in (True, False):
            raise ValueError(f"a completed cas must have result True or False: {op}")
    if math.isnan(op.invoke) or math.isinf(op.invoke):
        raise ValueError(f"invoke must be a finite time: {op}")


def _code(op: Op) -> int:
    if op.kind == "get":
        return _READ
    if op.kind == "put":
        return _PUT
    if op.complete is not None and op.result is False:
        return _CAS_FAIL
    return _CAS_OK


def _target(op: Op) -> Any:
    """What the state is compared with: a get's result, a cas's expected value."""
    return op.result if op.kind == "get" else op.expected


class _TooLarge(Exception):
    pass


def _check_key(key: str, key_ops: list[Op], init: str | None, max_states: int) -> CheckResult:
    # Unknown-outcome gets carry no information. Sort by invoke (then completion) so that the candidates
    # at any point are found by a short scan from the first op not yet linearized.
    ops = [op for op in key_ops if not (op.kind == "get" and op.complete is None)]
    ops.sort(key=lambda op: (op.invoke, INF if op.complete is None else op.complete))
    try:
        found, best = _search(ops, init, max_states)
    except _TooLarge:
        return CheckResult(
            ok=False, key=key,
            explanation=(f"key {key!r}: search too large: more than {max_states} states explored without a "
                         f"verdict ({len(ops)} operations); the history was NOT shown to be linearizable.\n"
                         + _format_history(ops, None)))
    if found:
        return CheckResult(ok=True, key=None, explanation=f"key {key!r}: linearizable")
    return CheckResult(ok=False, key=key, explanation=_explain(key, ops, init, best))


def _search(ops: list[Op], init: str | None, max_states: int) -> tuple[bool, list[int]]:
    """DFS over (linearized set, state). Returns (found, longest linearizable prefix as op indices)."""
    n = len(ops)
    inv = [op.invoke for op in ops]
    comp = [INF if op.complete is None else op.complete for op in ops]
    known = [op.complete is not None for op in ops]
    code = [_code(op) for op in ops]
    tgt = [_target(op) for op in ops]
    val = [op.value for op in ops]
    bits = [1 << i for i in range(n)]
    required = sum(known)
    comp_key = comp.__getitem__

    # Unknown-outcome writes, numbered separately: `umask` says which are linearized.
    unknown = [i for i in range(n) if not known[i]]
    ubits = [0] * n
    for u, i in enumerate(unknown):
        ubits[i] = 1 << u
    # needs[v]: completed ops that must see value v (gets of v, cas answered True expecting v);
    # writers[v]: ops that may write v; observed: values some op could ever look for.
    needs: dict[Any, list[int]] = {}
    writers: dict[Any, list[int]] = {}
    observed: set[Any] = set()
    for i in range(n):
        if code[i] == _READ or (code[i] == _CAS_OK and known[i]):
            needs.setdefault(tgt[i], []).append(i)
        if code[i] == _CAS_OK:
            observed.add(tgt[i])
        if code[i] in (_PUT, _CAS_OK):
            writers.setdefault(val[i], []).append(i)
    observed.update(needs)
    # An unknown-outcome write whose value nobody looks for only matters when it makes a failed cas legal.
    blind = [not known[i] and val[i] not in observed for i in range(n)]

    lin = bytearray(n)            # lin[i] == 1 iff op i is linearized on the current search path
    cache: set[tuple[int, int, int, Any]] = set()
    stack: list[list[Any]] = []   # frames: [mask, umask, state, first, done, candidates, next, applied, path]

    # The node being entered: its masks/state/first/done, the ops applied to reach it from its parent
    # (`applied`, extended by the greedy step below) and the parent's path (a linked list of `applied`s).
    # `first` is the lowest completed op not yet linearized; unknown-outcome ops below it are tracked by umask.
    mask, umask, state, first, done = 0, 0, init, 0, 0
    applied: list[int] = []
    parent_path: Any = None
    best_done, best_path = -1, None

    while True:
        while first < n and (lin[first] or not known[first]):
            first += 1
        # Scan the candidate window; linearize at once every state-preserving op that is legal now.
        minc = INF
        cands: list[int] = []
        cas_fail_waits = False    # a failed cas in the window needs the state to change first
        for i in unknown:
            if i >= first:
                break
            if not lin[i] and (code[i] == _PUT or state == tgt[i]):
                cands.append(i)
        i = first
        while i < n and inv[i] <= minc:
            if not lin[i]:
                c = code[i]
                if c == _READ or c == _CAS_FAIL:
                    if (state == tgt[i]) == (c == _READ):
                        lin[i] = 1
                        mask |= bits[i]
                        done += 1
                        applied.append(i)
                    else:
                        if comp[i] < minc:
                            minc = comp[i]
                        if c == _CAS_FAIL:
                            cas_fail_waits = True
                else:
                    if c == _PUT or state == tgt[i]:
                        cands.append(i)
                    if comp[i] < minc:
                        minc = comp[i]
            i += 1
        path = (applied, parent_path)
        if done > best_done:
            best_done, best_path = done, path
        if done == required:
            return True, _unwind(path)
        if cands:
            waiting = [j for j in needs.get(state, ()) if not lin[j]]
            if waiting and all(lin[w] for w in writers.get(state, ())):
                # Completed ops still have to see the current value, and it never comes back once
                # overwritten: only the one successful cas that needs it may overwrite it, if it is the last.
                cands = [c for c in cands if waiting == [c]]
            elif not cas_fail_waits:
                cands = [c for c in cands if not blind[c]]
        node = (first, mask >> first, umask, state)
        if cands and node not in cache:
            cache.add(node)
            if len(cache) > max_states:
                raise _TooLarge
            cands.sort(key=comp_key)  # earliest deadline first; unknown outcomes (INF) last
            stack.append([mask, umask, state, first, done, cands, 0, applied, path])
        else:
            for j in applied:
                lin[j] = 0
        # Take the next untried candidate of the deepest frame that has one.
        while stack:
            frame = stack[-1]
            k = frame[6]
            if k < len(frame[5]):
                frame[6] = k + 1
                c = frame[5][k]
                mask, umask, state = frame[0] | bits[c], frame[1] | ubits[c], val[c]
                first, done = frame[3], frame[4] + known[c]
                lin[c] = 1
                applied = [c]
                parent_path = frame[8]
                break
            stack.pop()
            for j in frame[7]:
                lin[j] = 0
        else:
            return False, _unwind(best_path)


def _unwind(path: Any) -> list[int]:
    chunks = []
    while path is not None:
        chunks.append(path[0])
        path = path[1]
    return [i for chunk in reversed(chunks) for i in chunk]


# ---------------------------------------------------------------------------------------------- explaining

def _fmt_time(t: float | None) -> str:
    if t is None:
        return "?"
    return f"{t:.6f}".rstrip("0").rstrip(".") if math.isfinite(t) else str(t)


def _fmt_op(index: int, op: Op) -> str:
    if op.kind == "get":
        body = f"get() -> {op.result!r}" if op.complete is not None else "get() -> ?"
    elif op.kind == "put":
        body = f"put({op.value!r})"
    else:
        outcome = repr(op.result) if op.complete is not None else "?"
        body = f"cas({op.expected!r} -> {op.value!r}) -> {outcome}"
    unknown = "  (outcome unknown)" if op.complete is None else ""
    return f"#{index:<4} {op.client:<8} {body}  [{_fmt_time(op.invoke)}, {_fmt_time(op.complete)}]{unknown}"


def _format_history(ops: list[Op], around: int | None) -> str:
    lines = [f"operations on this key, sorted by invoke ({len(ops)}; gets with unknown outcome dropped):"]
    lo, hi = 0, len(ops)
    if len(ops) > _HISTORY_LINES:
        centre = 0 if around is None else around
        lo = max(0, min(centre - _HISTORY_LINES // 4, len(ops) - _HISTORY_LINES))
        hi = lo + _HISTORY_LINES
    if lo:
        lines.append(f"  ... {lo} earlier operations omitted")
    lines += [f"  {_fmt_op(i, ops[i])}" for i in range(lo, hi)]
    if hi < len(ops):
        lines.append(f"  ... {len(ops) - hi} later operations omitted")
    return "\n".join(lines)


def _explain(key: str, ops: list[Op], init: str | None, prefix: list[int]) -> str:
    n = len(ops)
    lin = [False] * n
    state = init
    prefix_lines = []
    for step, i in enumerate(prefix, 1):
        op = ops[i]
        lin[i] = True
        if op.kind == "put" or (op.kind == "cas" and state == op.expected):
            state = op.value
        prefix_lines.append(f"  {step:>4}. {_fmt_op(i, op)}   => {state!r}")
    placed = sum(1 for i in prefix if ops[i].complete is not None)
    total = sum(1 for op in ops if op.complete is not None)

    # The pending window after the prefix: why none of its completed ops can come next.
    first = next((i for i in range(n) if not lin[i]), n)
    minc, window = INF, []
    for i in range(first, n):
        op = ops[i]
        if op.invoke > minc:
            break
        if not lin[i]:
            window.append(i)
            if op.complete is not None:
                minc = min(minc, op.complete)
    # Completed ops that must still see the current value, which nothing left can write again.
    waiting = [i for i, op in enumerate(ops) if not lin[i] and op.complete is not None and _target(op) == state
               and (op.kind == "get" or op.result is True)]
    if any(not lin[i] and op.kind != "get" and op.value == state for i, op in enumerate(ops)):
        waiting = []
    reasons = []
    for i in window:
        op = ops[i]
        if op.kind != "get" and waiting and waiting != [i] and (op.kind == "put" or state == op.expected):
            if op.complete is None:
                continue
            why = (f"it would overwrite {state!r}, which nothing writes again, but "
                   + ", ".join(f"#{j}" for j in waiting if j != i) + " must still see it")
        elif op.kind == "get":
            why = f"the key holds {state!r} here"
        elif op.kind == "cas" and op.complete is not None and op.result is False:
            why = f"it answered False, but the key holds the expected {state!r} here"
        elif op.kind == "cas" and state != op.expected:
            if op.complete is None:
                continue
            why = f"it answered True, but the key holds {state!r} here, not the expected {op.expected!r}"
        elif op.complete is None:
            why = "it may take effect here, but every continuation after it is stuck too"
        else:
            why = "it can take effect here, but every continuation after it is stuck"
        reasons.append(f"  {_fmt_op(i, op)}\n      cannot be placed next: {why}")
    blocking = [i for i in window if ops[i].complete == minc]

    lines = [f"key {key!r} is not linearizable (initial value {init!r}).",
             _format_history(ops, first), ""]
    lines.append(f"longest linearizable prefix found: {len(prefix)} operations "
                 f"({placed} of {total} completed ones), value after each:")
    if len(prefix_lines) > _PREFIX_LINES:
        lines.append(f"  ... {len(prefix_lines) - _PREFIX_LINES} earlier steps omitted")
        prefix_lines = prefix_lines[-_PREFIX_LINES:]
    lines += prefix_lines or ["  (none)"]
    lines.append(f"value after the prefix: {state!r}")
    if blocking:
        lines.append("the operation that could not be placed (it completes first among those left, so it must "
                     "take effect before anything invoked later):")
        lines += [f"  {_fmt_op(i, ops[i])}" for i in blocking]
    if waiting:
        lines.append(f"completed operations that must still see {state!r}:")
        lines += [f"  {_fmt_op(i, ops[i])}" for i in waiting]
    lines.append("operations that could come next, and why none fits:")
    lines += reasons or ["  (none)"]
    return "\n".join(lines)
