"""Consul's watch plans, pure: a watch definition checked (`parse_watch`), the blocking query each type makes,
its answer turned into the handler's data, and the loop's decisions (`WatchState`: fire or not, the next index,
the backoff after an error). Shared by `meshagent watch` (cli/watch_cmd.py) and the agent's config `watches`
(agent/watch_runner.py); standard library only, no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

WATCH_TYPES = ("key", "keyprefix", "services", "nodes", "service", "checks", "event")
CHECK_STATES = ("any", "passing", "warning", "critical")
RETRY_BASE = 5.0  # Consul's retryInterval: the wait after the n-th error in a row is RETRY_BASE * n * n ...
RETRY_MAX = 180.0  # ... at most maxBackoffTime
MAX_PARAM = 1024  # characters of one string parameter (a key, a service name, a tag)
MAX_TAGS = 64
MAX_BODY = 64 * 1024 * 1024  # bytes of one answer the watch decodes
# Keys of a watch definition that are not query parameters: the handler, checked by the caller.
HANDLER_KEYS = frozenset({"args", "handler", "handler_type", "http_handler_config"})
_PARAMS = {"key": ("key", "stale"), "keyprefix": ("prefix", "stale"), "services": ("stale",),
           "nodes": ("stale",), "service": ("service", "tag", "passingonly", "stale"),
           "checks": ("service", "state", "tag", "stale"), "event": ("name",)}
_COMMON = ("type", "datacenter", "token")


class WatchError(ValueError):
    """A watch definition that cannot run; `field` names the offending parameter."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class QueryError(Exception):
    """A blocking query that did not give an answer the watch can use (retried with backoff)."""


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """One checked watch: its type and the parameters that type takes."""

    type: str
    key: str = ""
    prefix: str = ""
    service: str = ""
    tags: tuple[str, ...] = ()
    passing_only: bool = False
    state: str = ""
    name: str = ""
    datacenter: str = ""
    token: str = ""
    stale: bool = False

    def params(self) -> dict[str, Any]:
        """The definition back as Consul's parameters (what `parse_watch` reads), defaults left out."""
        out: dict[str, Any] = {"type": self.type}
        for name, value in (("key", self.key), ("prefix", self.prefix), ("service", self.service),
                            ("state", self.state), ("name", self.name), ("datacenter", self.datacenter),
                            ("token", self.token)):
            if value:
                out[name] = value
        if self.tags:
            out["tag"] = list(self.tags)
        if self.passing_only:
            out["passingonly"] = True
        if self.stale:
            out["stale"] = True
        return out

    def query(self, index: int, wait: str = "") -> tuple[str, list[tuple[str, str]]]:
        """The blocking query for this watch at `index` (0: answer at once): a path (not percent-encoded)
        and query parameters. `wait` is a Go duration ("" leaves it to the agent's default)."""
        params: list[tuple[str, str]] = []
        kind = self.type
        if kind == "key":
            path = f"/v1/kv/{self.key}"
        elif kind == "keyprefix":
            path, params = f"/v1/kv/{self.prefix}", [("recurse", "")]
        elif kind == "services":
            path = "/v1/catalog/services"
        elif kind == "nodes":
            path = "/v1/catalog/nodes"
        elif kind == "service":
            path = f"/v1/health/service/{self.service}"
            params = [("tag", t) for t in self.tags] + ([("passing", "1")] if self.passing_only else [])
        elif kind == "checks":
            if self.state:
                path, params = f"/v1/health/state/{self.state}", [("tag", t) for t in self.tags]
            else:
                path = f"/v1/health/checks/{self.service}"
        else:
            path = "/v1/event/list"
            params = [("name", self.name)] if self.name else []
        if self.datacenter:
            params.append(("dc", self.datacenter))
        if self.stale:
            params.append(("stale", ""))
        if index > 0:
            params.append(("index", str(index)))
        if wait:
            params.append(("wait", wait))
        return path, params


def parse_watch(params: Mapping[str, Any]) -> WatchSpec:
    """Check a watch definition as Consul's watch.Parse does (handler keys excluded: HANDLER_KEYS are the
    caller's); raises WatchError naming the parameter."""
    kind = params.get("type")
    if kind is None or kind == "":
        raise WatchError("type", "Watch type must be specified")
    if not isinstance(kind, str):
        raise WatchError("type", "Expecting type to be a string")
    if kind not in _PARAMS:
        raise WatchError("type", f"Unsupported watch type: {kind[:40]!r} (one of {', '.join(WATCH_TYPES)})")
    allowed = set(_PARAMS[kind]) | set(_COMMON) | HANDLER_KEYS
    bad = sorted(str(k)[:40] for k in params if k not in allowed)
    if bad:
        raise WatchError(bad[0], f"Invalid parameters for a {kind} watch: {bad}")
    strings = {name: _string(params, name) for name in ("key", "prefix", "service", "state", "name",
                                                          "datacenter", "token")}
    spec = WatchSpec(type=kind, key=strings["key"], prefix=strings["prefix"], service=strings["service"],
                     tags=_tags(params), passing_only=_bool(params, "passingonly"), state=strings["state"],
                     name=strings["name"], datacenter=strings["datacenter"], token=strings["token"],
                     stale=_bool(params, "stale"))
    if kind == "key" and not spec.key:
        raise WatchError("key", "Must specify a single key to watch")
    if kind == "keyprefix" and not spec.prefix:
        raise WatchError("prefix", "Must specify a single prefix to watch")
    if kind == "service" and not spec.service:
        raise WatchError("service", "Must specify a single service to watch")
    if kind == "checks":
        if spec.service and spec.state:
            raise WatchError("state", "Cannot specify service and state")
        if not spec.service and not spec.state:
            spec = replace(spec, state="any")
        if spec.state and spec.state not in CHECK_STATES:
            raise WatchError("state", f"must be one of {', '.join(CHECK_STATES)}, not {spec.state[:40]!r}")
    return spec


def _string(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name, "")
    if not isinstance(value, str):
        raise WatchError(name, f"Expecting {name} to be a string")
    if len(value) > MAX_PARAM or "\x00" in value:
        raise WatchError(name, f"must be at most {MAX_PARAM} characters, without NUL")
    return value


def _bool(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise WatchError(name, f"Expecting {name} to be a boolean")
    return value


def _tags(params: Mapping[str, Any]) -> tuple[str, ...]:
    raw = params.get("tag", [])
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)):
        raise WatchError("tag", "Expecting tag to be a string or a list of strings")
    if len(items) > MAX_TAGS:
        raise WatchError("tag", f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(items):
        if not isinstance(tag, str):
            raise WatchError("tag", f"Index {i} of tag expected to be string")
        if len(tag) > MAX_PARAM or "\x00" in tag:
            raise WatchError("tag", f"must be at most {MAX_PARAM} characters, without NUL")
    return tuple(items)


def event_index(event_id: str) -> int:
    """Consul's IDToIndex: an event ID's two 64-bit halves XORed (the event list's X-Consul-Index)."""
    digits = event_id.replace("-", "")
    try:
        return int(digits[:16], 16) ^ int(digits[16:32], 16)
    except ValueError:
        return 0


def interpret(spec: WatchSpec, status: int, index_header: str | None, body: bytes,
              last_index: int | None) -> tuple[int, Any]:
    """An answer to `spec.query` as (index, the handler's data); QueryError when it is not usable.
    A missing key or an empty prefix is a 404 whose data is null, as Consul's watch gives."""
    if status not in (200, 404) or (status == 404 and spec.type not in ("key", "keyprefix")):
        text = body[:200].decode(errors="replace").strip().splitlines()
        raise QueryError(f"Unexpected response code: {status} ({text[0] if text else 'no body'})")
    if not index_header or not index_header.isdigit() or len(index_header) > 20:
        raise QueryError(f"Missing or bad X-Consul-Index header: {str(index_header)[:40]!r}")
    # An index of 0 would make the next query answer at once, forever: Consul's clients treat it as 1.
    index = max(1, int(index_header))
    if status == 404:
        return index, None
    if len(body) > MAX_BODY:
        raise QueryError(f"answer larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise QueryError(f"answer is not JSON: {str(exc)[:80]}") from None
    if spec.type == "key":
        return index, data[0] if isinstance(data, list) and data else None
    if spec.type == "event" and isinstance(data, list) and last_index is not None:
        # Only the events after the last one delivered (Consul prunes the same way).
        for i, event in enumerate(data):
            if isinstance(event, dict) and event_index(str(event.get("ID", ""))) == last_index:
                data = data[i + 1:]
                break
    return index, data


@dataclass(slots=True)
class WatchState:
    """Consul's watch Plan loop, minus the I/O: which index to ask with, whether an answer fires the handler
    (once per change: a blocking timeout at the same index, or a new index with the same data, does not),
    and how long to wait after an error."""

    spec: WatchSpec
    index: int | None = None  # the index the next query blocks on (None: not known yet)
    seen: int | None = None  # the last index answered, kept across errors (events are pruned after it)
    failures: int = 0
    fired: bool = False
    result: Any = field(default=None)
    retry_base: float = RETRY_BASE  # tests shorten it

    def next_index(self) -> int:
        """The `?index=` of the next query (0: answer at once)."""
        return self.index or 0

    def observe(self, index: int, result: Any) -> bool:
        """An answer arrived: True when the handler must run with `result`."""
        self.failures = 0
        if self.index is not None and index == self.index:
            return False  # the blocking query timed out: nothing changed
        previous, self.seen = self.index, index
        # An index going backwards (a restore, another server) starts over from 0, as Consul's
        # WaitIndexVal.Next; event indexes are hashes of event IDs, with no order to go back in.
        self.index = 0 if previous is not None and index < previous and self.spec.type != "event" else index
        if self.spec.type == "event" and self.fired and result == []:
            return False  # nothing new after pruning
        if self.fired and result == self.result:
            return False  # a new index with the same data (another write under the same watch key)
        self.fired, self.result = True, result
        return True

    def failed(self) -> float:
        """A query failed: the seconds to wait before the next, growing with each error in a row (capped).
        The next query answers at once; the data last delivered is kept, so an unchanged answer after
        the error does not run the handler again."""
        self.failures += 1
        self.index = None
        return min(self.retry_base * self.failures * self.failures, RETRY_MAX)

    def answer(self, status: int, index_header: str | None, body: bytes) -> tuple[bool, int, Any]:
        """An HTTP answer to this watch's query: (run the handler?, the index, its data). QueryError when
        the answer is unusable (call `failed` then)."""
        index, result = interpret(self.spec, status, index_header, body, self.seen)
        return self.observe(index, result), index, result
