"""`/v1/event/list` as a blocking query (Consul's index: the last event's ID folded to 64 bits), through
py-consul against a real agent."""

from __future__ import annotations

import threading
import time
import uuid

import consul
from meshagent.agent.http.event_api import uuid_to_uint64

from tests.support.agents import AgentProcess
from tests.support.wait import wait_for


def test_the_index_folds_the_event_id_as_consul_does() -> None:
    ident = uuid.UUID("00000000-0000-0001-0000-000000000003")
    assert uuid_to_uint64(str(ident)) == 1 ^ 3
    assert uuid_to_uint64("ffffffff-ffff-ffff-ffff-ffffffffffff") == 0


def test_a_blocking_event_list_returns_when_an_event_arrives(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host=dev_agent.host, port=8500)
    index, events = c.event.list(name="deploy")
    assert events == [] and int(index) == 1  # never 0: a watch loop must block, not spin
    fired = c.event.fire("deploy", "v1")
    wait_for(lambda: c.event.list(name="deploy")[1], 10, what="the event in the list")
    index, events = c.event.list(name="deploy")
    assert int(index) == uuid_to_uint64(fired["ID"]) and events[0]["ID"] == fired["ID"]

    answer: list[tuple[str, list[dict[str, str]]]] = []
    blocked = threading.Thread(target=lambda: answer.append(c.event.list(name="deploy", index=index, wait="30s")))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive(), "the blocking list answered before any new event"
    c.event.fire("other", "x")  # another name: the answer for ?name=deploy is unchanged, it keeps waiting
    blocked.join(0.5)
    assert blocked.is_alive(), "an event of another name woke the blocking list"
    second = c.event.fire("deploy", "v2")
    blocked.join(10)
    assert not blocked.is_alive()
    new_index, events = answer[0]
    assert [e["ID"] for e in events] == [fired["ID"], second["ID"]]
    assert int(new_index) == uuid_to_uint64(second["ID"])


def test_a_blocking_event_list_times_out_with_the_same_index(dev_agent: AgentProcess) -> None:
    c = consul.Consul(host=dev_agent.host, port=8500)
    index, _ = c.event.list()
    start = time.monotonic()
    again, events = c.event.list(index=index, wait="200ms")
    assert again == index and events == []
    assert time.monotonic() - start < 10  # 200 ms plus at most 1/16 jitter; bound generous for liveness
