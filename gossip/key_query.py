"""KeyQueryResult: the tally of a Serf key query's answers (what /v1/operator/keyring reports), pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import messages as m
from . import serf_messages as sm
from .outputs import QueryResponse


@dataclass(frozen=True, slots=True)
class KeyQueryResult:
    """How many members hold each key and each primary key, who failed and why, for the LAN pool."""

    datacenter: str
    num_nodes: int
    num_resp: int
    num_err: int
    keys: dict[str, int] = field(default_factory=dict)
    primary_keys: dict[str, int] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)


def tally(answers: Sequence[QueryResponse], alive: int, datacenter: str) -> KeyQueryResult:
    """Count the keys the answers report; a member that failed, sent garbage or never answered is an error."""
    keys: dict[str, int] = {}
    primary: dict[str, int] = {}
    messages: dict[str, str] = {}
    errors = 0
    for answer in answers:
        try:
            resp = sm.decode(answer.payload)
        except m.MessageError as exc:
            messages[answer.from_node] = f"bad response: {exc}"
            errors += 1
            continue
        if not isinstance(resp, sm.KeyResponseMsg):
            continue
        if not resp.result:
            errors += 1
            messages[answer.from_node] = resp.message
        for k in resp.keys:
            keys[k] = keys.get(k, 0) + 1
        if resp.primary_key:
            primary[resp.primary_key] = primary.get(resp.primary_key, 0) + 1
    return KeyQueryResult(datacenter, alive, len(answers), errors + max(0, alive - len(answers)), keys, primary,
                          messages)
