"""RPC errors cross :8300 as codes: the caller gets the server's exception type back, never text to match."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from meshagent.agent.rpc.client import RPCClient
from meshagent.agent.rpc.errors import (
    NoLeader,
    NotLeader,
    PermissionDenied,
    RateLimited,
    Rejected,
    ServerError,
    Unanswered,
    Unreachable,
    decode_error,
    encode_error,
)
from meshagent.agent.server.listener import ServerListener

HOST = "127.0.0.190"
ERRORS: dict[str, ServerError] = {
    "not_leader": NotLeader("not the leader (term 3)"),
    "no_leader": NoLeader(),
    "rejected": Rejected("Missing node registration"),
    "limited": RateLimited("slow down"),
    "plain": ServerError("something else", 409),
}


async def _handler(method: str, args: Any) -> Any:
    if method == "hang":
        await trio.sleep_forever()
    if method == "bad_value":
        raise ValueError("bad argument")
    if method == "forbidden":
        raise PermissionError("no")
    raise ERRORS[method]


async def _calls() -> dict[str, BaseException]:
    got: dict[str, BaseException] = {}
    listener = ServerListener(HOST, 0, lambda *a: None, _handler)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(listener.run)
        client = RPCClient(f"{HOST}:{port}")
        for method in [*ERRORS, "bad_value", "forbidden", "hang"]:
            try:
                await client.call(nursery, method, None, timeout=0.5 if method == "hang" else 10)
            except ServerError as exc:
                got[method] = exc
        nursery.cancel_scope.cancel()
    with trio.socket.socket() as probe:  # a port nobody listens on: bound, never listening
        await probe.bind((HOST, 0))
        dead = probe.getsockname()[1]
        async with trio.open_nursery() as nursery:
            try:
                await RPCClient(f"{HOST}:{dead}").call(nursery, "x", None, timeout=5)
            except ServerError as exc:
                got["unreachable"] = exc
    return got


def test_each_error_arrives_as_its_own_type_with_its_status() -> None:
    got = trio.run(_calls)
    for method, sent in ERRORS.items():
        assert type(got[method]) is type(sent), (method, got[method])
        assert str(got[method]) == str(sent)
    assert got["not_leader"].status == 500 and got["rejected"].status == 400 and got["limited"].status == 429
    assert got["plain"].status == 500  # a status chosen by the server stays local to it, as before
    assert type(got["bad_value"]) is Rejected and str(got["bad_value"]) == "bad argument"
    assert type(got["forbidden"]) is PermissionDenied and "permission denied" in str(got["forbidden"])
    # Never sent versus sent without an answer: only the first is safe to retry for a write.
    assert type(got["unreachable"]) is Unreachable, got["unreachable"]
    assert type(got["hang"]) is Unanswered, got["hang"]


@pytest.mark.parametrize("wire", [None, 7, "text", ["Nope", "x"], ["Rejected"], [1, 2], ["NotLeader", b"\xff" * 9000]])
def test_malformed_or_unknown_codes_decode_to_a_plain_bounded_error(wire: object) -> None:
    exc = decode_error(wire)
    assert isinstance(exc, ServerError) and len(str(exc)) <= 4096
    if not (isinstance(wire, list) and len(wire) == 2 and wire[0] == "NotLeader"):
        assert type(exc) is ServerError


def test_encode_then_decode_keeps_type_and_message() -> None:
    for exc in [*ERRORS.values(), Unreachable("u"), Unanswered("a"), PermissionDenied("p")]:
        back = decode_error(encode_error(exc))
        assert type(back) is type(exc) and str(back) == str(exc)
