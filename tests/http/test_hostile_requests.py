"""Hostile requests against the in-process /v1 API, over raw sockets: smuggling framings, filter bombs,
deep nesting. Each is a one-line 4xx, never a 500 or a traceback in the log."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
from meshagent.agent.http.filter import HEALTH_ENTRY_SCHEMA, MAX_FILTER_DEPTH, FilterError, evaluate, parse_filter

from tests.support.http_harness import ServerThread, register_instance

SMUGGLED = b"GET /v1/agent/self HTTP/1.1\r\nHost: x\r\n\r\n"


def _exchange(server: ServerThread, raw: bytes) -> bytes:
    """Send raw bytes, then read everything the server says until it closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(raw)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
    return bytes(out)


@pytest.mark.parametrize("framing", [
    # Chunked says the body ends at "0\r\n\r\n" and a GET follows; Content-Length says it is all body.
    b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % (5 + len(SMUGGLED)),
    b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % (5 + len(SMUGGLED)),
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 5\r\ncontent-length: 45\r\n",
], ids=["cl-te", "te-cl", "cl-twice", "cl-list", "cl-conflict"])
def test_ambiguous_framing_is_400_and_close_with_no_second_response(api_server: ServerThread,
                                                                    framing: bytes) -> None:
    raw = b"PUT /v1/kv/smuggle HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n0\r\n\r\n" + SMUGGLED
    reply = _exchange(api_server, raw)
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # the smuggled GET was never answered
    assert b"connection: close" in reply.lower()
    assert httpx.get(f"{api_server.url}/v1/kv/smuggle").status_code == 404  # and nothing was written


def test_a_single_content_length_still_keeps_the_connection(api_server: ServerThread) -> None:
    raw = b"PUT /v1/kv/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv" + SMUGGLED[:-2] + \
        b"Connection: close\r\n\r\n"
    reply = _exchange(api_server, raw)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1 200 ") == 2, reply[:300]


@pytest.mark.parametrize("text, reason", [
    ("(" * 3000 + "Service.Service == web" + ")" * 3000, "longer than 4096 characters"),
    ("(" * 40 + "Service.Service == web" + ")" * 40, f"nested deeper than {MAX_FILTER_DEPTH} levels"),
    ("not " * 500 + "Service.Service == web", f"nested deeper than {MAX_FILTER_DEPTH} levels"),
    ("(" * 2000, f"nested deeper than {MAX_FILTER_DEPTH} levels"),
])
def test_filter_bombs_are_a_400_without_a_traceback(api_server: ServerThread, caplog: pytest.LogCaptureFixture,
                                                    text: str, reason: str) -> None:
    register_instance(api_server, "n1", "web")
    with caplog.at_level(logging.DEBUG):
        # Parentheses unescaped, as a hand-made attack sends them (escaped, 3,000 pairs pass 16 KiB).
        r = httpx.get(f"{api_server.url}/v1/health/service/web?filter={text.replace(' ', '%20')}")
    assert r.status_code == 400 and reason in r.text and r.text.count("\n") == 1, r.text[:300]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]


def test_filter_within_bounds_still_works(api_server: ServerThread) -> None:
    register_instance(api_server, "n1", "web", port=80)
    depth_ok = "(" * MAX_FILTER_DEPTH + "Service.Port == 80" + ")" * MAX_FILTER_DEPTH
    many_terms = " or ".join(["Service.Port == 81"] * 150 + ["Service.Port == 80"])
    for text in (depth_ok, many_terms):
        r = httpx.get(f"{api_server.url}/v1/health/service/web", params={"filter": text})
        assert r.status_code == 200 and len(r.json()) == 1, r.text[:200]


def test_long_and_or_chains_evaluate_without_deep_recursion() -> None:
    # 180 terms (near the length limit) nest log2(180) deep, not 180 deep.
    expr = parse_filter(" and ".join(["Service.Port != 1"] * 180), HEALTH_ENTRY_SCHEMA)
    depth, node = 0, expr
    while hasattr(node, "left"):
        depth, node = depth + 1, node.left
    assert depth <= 8
    assert evaluate(expr, {"Service": {"Port": 2}}) is True
    with pytest.raises(FilterError):
        parse_filter("not " * (MAX_FILTER_DEPTH + 1) + "Service.Port == 1", HEALTH_ENTRY_SCHEMA)


def test_deeply_nested_json_body_is_a_400(api_server: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        r = httpx.put(f"{api_server.url}/v1/agent/service/register", content=b"[" * 200_000)
    assert r.status_code == 400, r.text[:200]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]
