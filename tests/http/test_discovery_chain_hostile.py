"""`/v1/discovery-chain/:service` fed hostile input on one real `-dev` agent (127.0.35.N): override bodies whose
values are the wrong JSON type or past a float's range, datacenter names that would make target IDs and SNIs
ambiguous, and blocking reads with absurd indexes are 400s naming the field (never a 500, never a hang)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.agents import AgentProcess, scratch_dir
from tests.support.ports import ports_free

HOSTS = [f"127.0.35.{n}" for n in range(10, 30)]


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    host = next((h for h in HOSTS if ports_free(h)), None)
    if host is None:
        raise RuntimeError("no free 127.0.35.N")
    proc = AgentProcess(host=host, args=["-dev", "-client", host, "-bind", host, "-node", "chain-hostile"],
                        workdir=scratch_dir()).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.parametrize(("body", "reason"), [
    (b'{"OverrideConnectTimeout": 1' + b"0" * 400 + b"}", "OverrideConnectTimeout"),  # was a 500 (OverflowError)
    (b'{"OverrideConnectTimeout": -5}', "OverrideConnectTimeout"),
    (b'{"OverrideConnectTimeout": false}', "OverrideConnectTimeout"),
    (b'{"OverrideConnectTimeout": [1]}', "OverrideConnectTimeout"),
    (b'{"OverrideProtocol": {}}', "OverrideProtocol"),  # was read as unset: 200
    (b'{"OverrideProtocol": false}', "OverrideProtocol"),
    (b'{"OverrideMeshGateway": []}', "OverrideMeshGateway"),
    (b'{"OverrideMeshGateway": "remote"}', "OverrideMeshGateway"),
    (b"[" * 100000 + b"]" * 100000, "larger than"),
    (b"[" * 8000 + b"]" * 8000, "Request decoding failed"),
])
def test_hostile_override_bodies_are_400s(agent: AgentProcess, body: bytes, reason: str) -> None:
    got = httpx.post(f"{agent.http_addr}/v1/discovery-chain/web", content=body, timeout=10)
    assert got.status_code == 400, got.text
    assert reason in got.text


@pytest.mark.parametrize("dc", [".", "..", "dc1.evil", "a.b.c"])
def test_a_compile_dc_with_dots_is_refused(agent: AgentProcess, dc: str) -> None:
    # a dc is the last label of a target ID: "web.default.default.a.b" would be read back as service "default"
    got = httpx.get(f"{agent.http_addr}/v1/discovery-chain/web", params={"compile-dc": dc}, timeout=10)
    assert got.status_code == 400, got.text
    assert "invalid compile-dc" in got.text


def test_valid_overrides_still_apply(agent: AgentProcess) -> None:
    got = httpx.post(f"{agent.http_addr}/v1/discovery-chain/web?compile-dc=dc_2-x", timeout=10,
                     json={"OverrideConnectTimeout": 7 * 10**9, "OverrideProtocol": None, "OverrideMeshGateway": None})
    assert got.status_code == 200, got.text
    chain = got.json()["Chain"]
    assert chain["Datacenter"] == "dc_2-x"
    assert chain["Targets"]["web.default.default.dc_2-x"]["ConnectTimeout"] == "7s"


@pytest.mark.parametrize("index", ["99999999999999999999999", "18446744073709551616", "-1", "1e9", "0x10"])
def test_absurd_blocking_indexes_answer_at_once(agent: AgentProcess, index: str) -> None:
    got = httpx.get(f"{agent.http_addr}/v1/discovery-chain/web", params={"index": index, "wait": "30s"}, timeout=5)
    assert got.status_code == 400, got.text
    assert "index" in got.text.lower()
