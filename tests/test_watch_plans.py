"""meshagent/watch_plan.py: watch definitions checked as Consul's watch.Parse, the query per type, answers turned
into handler data, and the plan loop's decisions (once per change, index reset, backoff)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from meshagent.watch_plan import (
    MAX_BODY,
    QueryError,
    WatchError,
    WatchState,
    event_index,
    interpret,
    parse_watch,
)


def _error(params: dict[str, Any]) -> WatchError:
    with pytest.raises(WatchError) as info:
        parse_watch(params)
    return info.value


@pytest.mark.parametrize(("params", "field", "text"), [
    ({}, "type", "Watch type must be specified"),
    ({"type": 3}, "type", "to be a string"),
    ({"type": "bogus"}, "type", "Unsupported watch type: 'bogus'"),
    ({"type": "key"}, "key", "Must specify a single key"),
    ({"type": "keyprefix"}, "prefix", "Must specify a single prefix"),
    ({"type": "service"}, "service", "Must specify a single service"),
    ({"type": "checks", "service": "db", "state": "passing"}, "state", "Cannot specify service and state"),
    ({"type": "checks", "state": "sick"}, "state", "must be one of any, passing"),
    ({"type": "key", "key": "a", "prefix": "b"}, "prefix", "Invalid parameters for a key watch"),
    ({"type": "event", "stale": True}, "stale", "Invalid parameters"),
    ({"type": "service", "service": "db", "passingonly": "yes"}, "passingonly", "to be a boolean"),
    ({"type": "service", "service": "db", "tag": [1]}, "tag", "Index 0 of tag"),
    ({"type": "service", "service": "db", "tag": {"a": 1}}, "tag", "string or a list"),
    ({"type": "service", "service": "db", "tag": ["t"] * 65}, "tag", "at most 64"),
    ({"type": "key", "key": "k" * 1025}, "key", "at most 1024"),
    ({"type": "key", "key": "a\x00b"}, "key", "without NUL"),
    ({"type": "nodes", "token": ["x"]}, "token", "to be a string"),
])
def test_bad_definitions_name_the_parameter(params: dict[str, Any], field: str, text: str) -> None:
    exc = _error(params)
    assert exc.field == field
    assert text in exc.message


def test_definitions_round_trip_and_defaults() -> None:
    spec = parse_watch({"type": "service", "service": "db", "tag": "v1", "passingonly": True, "token": "t",
                        "args": ["x"], "handler_type": "script"})
    assert spec.tags == ("v1",) and spec.passing_only and spec.token == "t"
    assert parse_watch(spec.params()) == spec
    assert parse_watch({"type": "checks"}).state == "any"  # Consul's default: every check
    assert parse_watch({"type": "checks", "service": "db"}).state == ""


@pytest.mark.parametrize(("params", "path", "query"), [
    ({"type": "key", "key": "a/b c"}, "/v1/kv/a/b c", []),
    ({"type": "keyprefix", "prefix": "app/"}, "/v1/kv/app/", [("recurse", "")]),
    ({"type": "services", "stale": True}, "/v1/catalog/services", [("stale", "")]),
    ({"type": "nodes", "datacenter": "dc2"}, "/v1/catalog/nodes", [("dc", "dc2")]),
    ({"type": "service", "service": "db", "tag": ["a", "b"], "passingonly": True}, "/v1/health/service/db",
     [("tag", "a"), ("tag", "b"), ("passing", "1")]),
    ({"type": "checks", "state": "critical"}, "/v1/health/state/critical", []),
    ({"type": "checks", "service": "db"}, "/v1/health/checks/db", []),
    ({"type": "event", "name": "deploy"}, "/v1/event/list", [("name", "deploy")]),
])
def test_queries(params: dict[str, Any], path: str, query: list[tuple[str, str]]) -> None:
    spec = parse_watch(params)
    assert spec.query(0) == (path, query)
    assert spec.query(7, "2s") == (path, [*query, ("index", "7"), ("wait", "2s")])


def test_answers_become_consuls_handler_data() -> None:
    key, prefix = parse_watch({"type": "key", "key": "k"}), parse_watch({"type": "keyprefix", "prefix": "p"})
    pair = {"Key": "k", "Value": "dg==", "ModifyIndex": 5}
    assert interpret(key, 200, "5", json.dumps([pair]).encode(), None) == (5, pair)  # one object, not a list
    assert interpret(key, 404, "9", b"", None) == (9, None)  # a missing key: null
    assert interpret(prefix, 404, "9", b"", None) == (9, None)
    assert interpret(prefix, 200, "0", b"[]", None) == (1, [])  # index 0 would spin: 1
    nodes = parse_watch({"type": "nodes"})
    for status, header, body, text in ((404, "3", b"", "404"), (500, "3", b"boom\nmore", r"500 \(boom\)"),
                                       (403, "3", b"", r"403 \(no body\)"), (200, None, b"[]", "X-Consul-Index"),
                                       (200, "-1", b"[]", "X-Consul-Index"), (200, "9" * 21, b"[]", "Index"),
                                       (200, "3", b"{nope", "not JSON"), (200, "3", b"[" * 100000, "not JSON")):
        with pytest.raises(QueryError, match=text):
            interpret(nodes, status, header, body, None)
    with pytest.raises(QueryError, match="larger"):
        interpret(nodes, 200, "3", b" " * (MAX_BODY + 1), None)


def _event(n: int) -> dict[str, Any]:
    return {"ID": f"{n:08x}-0000-0000-0000-{n:012x}", "Name": "deploy", "LTime": n}


def test_events_are_pruned_to_the_new_ones() -> None:
    spec = parse_watch({"type": "event"})
    events = [_event(1), _event(2), _event(3)]
    last = event_index(events[1]["ID"])
    assert interpret(spec, 200, "42", json.dumps(events).encode(), last) == (42, [events[2]])
    assert interpret(spec, 200, "42", json.dumps(events).encode(), None)[1] == events
    assert event_index("not-a-uuid") == 0


def test_fires_once_per_change_not_per_timeout() -> None:
    state = WatchState(parse_watch({"type": "service", "service": "db"}))
    assert state.next_index() == 0
    assert state.observe(10, [])  # the first answer always runs the handler (Consul's watch does)
    assert state.next_index() == 10
    assert not state.observe(10, [])  # the blocking query timed out at the same index
    assert not state.observe(12, [])  # a new index, the same data: nothing to hand over
    assert state.next_index() == 12
    assert state.observe(13, [{"Node": "a"}])
    assert state.result == [{"Node": "a"}]
    assert not state.observe(13, [{"Node": "b"}])  # same index: never looked at


def test_index_going_backwards_starts_over() -> None:
    state = WatchState(parse_watch({"type": "nodes"}))
    state.observe(50, ["a"])
    assert state.observe(20, ["b"])
    assert state.next_index() == 0  # the next query answers at once, then blocks on what it returns
    assert not state.observe(20, ["b"])
    assert state.next_index() == 20
    events = WatchState(parse_watch({"type": "event"}))
    events.observe(50, [_event(1)])
    events.observe(20, [_event(2)])
    assert events.next_index() == 20  # event indexes are ID hashes: no order, no reset
    assert not events.observe(30, [])  # nothing new after pruning


def test_backoff_grows_and_keeps_the_last_data() -> None:
    state = WatchState(parse_watch({"type": "nodes"}))
    state.observe(10, ["a"])
    assert [state.failed() for _ in range(8)] == [5.0, 20.0, 45.0, 80.0, 125.0, 180.0, 180.0, 180.0]
    assert state.next_index() == 0
    assert not state.observe(10, ["a"])  # the same data after the errors: not handed over again
    assert state.failures == 0
    assert state.failed() == 5.0
    assert state.observe(11, ["a", "b"])


def test_answer_combines_interpret_and_observe() -> None:
    state = WatchState(parse_watch({"type": "key", "key": "k"}))
    assert state.answer(404, "4", b"") == (True, 4, None)
    assert state.answer(404, "4", b"") == (False, 4, None)
    with pytest.raises(QueryError):
        state.answer(500, "4", b"")
