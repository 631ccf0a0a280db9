"""Intentions, decided: Consul's precedence between exact and wildcard sources and destinations, pure.

An intention allows or denies a source service calling a destination service. For a call, the matching
intention with the highest precedence decides; at equal precedence a deny wins. Precedence follows Consul's
table over (namespace, name) of source and destination, exact or `*`: the destination's specificity counts
first, then the source's (9 = exact/exact → exact/exact, … 1 = */* → */*). An intention with L7
`Permissions` cannot be decided per connection, so at L4 it denies, as in Consul. When nothing matches, the
default (`acl { default_policy }`, allow unless set) decides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

WILDCARD = "*"


class Action(Enum):
    """What an L4 intention does."""

    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Intention:
    """One source → destination rule; `action` is None for an L7 intention (its `permissions` decide)."""

    source: str
    destination: str
    action: Action | None
    permissions: tuple[object, ...] = ()
    source_ns: str = "default"
    destination_ns: str = "default"

    @property
    def precedence(self) -> int:
        """Consul's precedence of this intention's (source, destination) shape, 1 to 9."""
        return precedence(self.source_ns, self.source, self.destination_ns, self.destination)

    def matches(self, source: str, destination: str, source_ns: str = "default",
                destination_ns: str = "default") -> bool:
        """Whether this intention applies to a call from `source` to `destination`."""
        return (_match(self.source_ns, source_ns) and _match(self.source, source)
                and _match(self.destination_ns, destination_ns) and _match(self.destination, destination))


@dataclass(frozen=True, slots=True)
class Decision:
    """An L4 decision and why: the intention that decided, or None when the default did."""

    allowed: bool
    matched: Intention | None
    reason: str


def precedence(source_ns: str, source: str, destination_ns: str, destination: str) -> int:
    """Consul's table: destination exact name 7-9, wildcard name 4-6, wildcard namespace 1-3; the source's
    specificity orders within each (exact name +2, wildcard name +1, wildcard namespace +0)."""
    return 3 * _specificity(destination_ns, destination) + _specificity(source_ns, source) + 1


def ordered(intentions: Iterable[Intention]) -> list[Intention]:
    """Evaluation order: highest precedence first, deny before allow at equal precedence, then by names."""
    return sorted(intentions, key=lambda i: (-i.precedence, i.action is not Action.DENY, i.source_ns, i.source,
                                             i.destination_ns, i.destination))


def decide_l4(intentions: Iterable[Intention], source: str, destination: str, default_allow: bool = True, *,
              source_ns: str = "default", destination_ns: str = "default") -> Decision:
    """Whether a connection from `source` to `destination` is allowed, and the intention that said so."""
    return decide_ordered(ordered(intentions), source, destination, default_allow, source_ns=source_ns,
                          destination_ns=destination_ns)


class IntentionIndex:
    """Intentions compiled for many decisions: by destination, each destination's candidates (its exact
    intentions and every wildcard-destination one) ordered once, so a decision scans only those."""

    def __init__(self, intentions: Iterable[Intention]) -> None:
        self._exact: dict[tuple[str, str], list[Intention]] = {}
        self._wild: list[Intention] = []
        for i in intentions:
            if i.destination == WILDCARD or i.destination_ns == WILDCARD:
                self._wild.append(i)
            else:
                self._exact.setdefault((i.destination_ns, i.destination), []).append(i)
        self._wild = ordered(self._wild)
        # Filled lazily; its keys are the exact destinations above, so it is bounded by the entries.
        self._merged: dict[tuple[str, str], list[Intention]] = {}

    def __len__(self) -> int:
        return len(self._wild) + sum(len(v) for v in self._exact.values())

    def candidates(self, destination: str, destination_ns: str = "default") -> list[Intention]:
        """The intentions that can match a call to `destination`, in evaluation order."""
        key = (destination_ns, destination)
        merged = self._merged.get(key)
        if merged is None:
            exact = self._exact.get(key)
            if exact is None:
                return self._wild
            merged = self._merged[key] = ordered([*exact, *self._wild])
        return merged

    def decide(self, source: str, destination: str, default_allow: bool = True, *, source_ns: str = "default",
               destination_ns: str = "default") -> Decision:
        """decide_l4 over this index: the same answer, without sorting or scanning other destinations."""
        return decide_ordered(self.candidates(destination, destination_ns), source, destination, default_allow,
                              source_ns=source_ns, destination_ns=destination_ns)


def decide_ordered(intentions: Iterable[Intention], source: str, destination: str, default_allow: bool = True,
                   *, source_ns: str = "default", destination_ns: str = "default") -> Decision:
    """decide_l4 over intentions already in evaluation order (`ordered`)."""
    for i in intentions:
        if not i.matches(source, destination, source_ns, destination_ns):
            continue
        if i.action is None:  # L7 permissions: cannot be decided per connection, so not allowed at L4
            return Decision(False, i, f"{_name(i)} has L7 permissions, which deny at L4")
        allowed = i.action is Action.ALLOW
        return Decision(allowed, i, f"matched {i.action.value} intention {_name(i)}")
    verb = "allow" if default_allow else "deny"
    return Decision(default_allow, None, f"no intention matched; default {verb}")


def _match(pattern: str, value: str) -> bool:
    return pattern == WILDCARD or pattern == value


def _specificity(namespace: str, name: str) -> int:
    if namespace == WILDCARD:
        return 0
    return 1 if name == WILDCARD else 2


def _name(i: Intention) -> str:
    return f"{i.source} => {i.destination}"
