"""proxy/http1.py: heads parsed whole or in any split, hostile heads refused with the right status (request
smuggling shapes above all), body framing counted chunk by chunk, keep-alive rules, paths normalised."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.proxy import http1
from meshagent.proxy.http1 import CHUNKED, CLOSE, LENGTH, NONE, Body, HeadReader, HTTPError, LazyHeaders

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~", min_size=1,
                max_size=20)
VALUE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 /=;,.:-\"", max_size=40).map(str.strip)
NAMES_TAKEN = {"content-length", "transfer-encoding", "connection", "host", "expect", "upgrade"}


def feed_split(reader: HeadReader, data: bytes, cuts: list[int], method: bytes = b""
               ) -> tuple[http1.Head | None, bytes]:
    """Feed `data` in pieces cut at `cuts`; the head and what followed it."""
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    start = 0
    for p in points:
        head, rest = reader.feed(data[start:p], method)
        if head is not None:
            return head, rest + data[p:]
        start = p
    return None, b""


@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
       path=st.text(alphabet="abcdefghij/._-~", max_size=30),
       fields=st.lists(st.tuples(TOKEN, VALUE), max_size=20),
       cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
       extra=st.binary(max_size=30))
def test_any_split_of_a_valid_request_gives_the_same_head(method: str, path: str, fields: list[tuple[str, str]],
                                                          cuts: list[int], extra: bytes) -> None:
    fields = [(n, v) for n, v in fields if n.lower() not in NAMES_TAKEN]
    raw = (f"{method} /{path} HTTP/1.1\r\nHost: h\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields)
           + "\r\n").encode()
    head, rest = feed_split(HeadReader(), raw + extra, cuts)
    assert head is not None
    assert rest == extra
    assert head.raw == raw
    assert head.method == method.encode() and head.target == f"/{path}".encode()
    assert head.headers == [(b"host", b"h")] + [(n.lower().encode(), v.encode()) for n, v in fields]
    assert head.body == NONE and head.keep_alive and head.version == 11


@settings(max_examples=500)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_random_bytes_give_a_head_or_need_more_or_a_clean_error(data: bytes, cuts: list[int]) -> None:
    for response in (False, True):
        try:
            feed_split(HeadReader(response), data, cuts, b"GET")
        except HTTPError as exc:
            assert exc.status in (400, 431, 501, 505, 502)


@settings(max_examples=300)
@given(mutation=st.tuples(st.integers(min_value=0, max_value=200), st.binary(min_size=1, max_size=3)))
def test_mutated_requests_only_ever_raise_http_errors(mutation: tuple[int, bytes]) -> None:
    base = (b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: keep-alive\r\n\r\n")
    at, junk = mutation
    at %= len(base)
    data = base[:at] + junk + base[at + len(junk):]
    try:
        head, _ = HeadReader().feed(data)
    except HTTPError:
        return
    if head is not None:  # whatever survived is unambiguous
        cl = [v for n, v in head.headers if n == b"content-length"]
        te = [v for n, v in head.headers if n == b"transfer-encoding"]
        assert not (cl and te)


SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 2\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\x0b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\n Transfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n",
    b"POST / HTTP/1.1\r\n\r\n",
    b"POST  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST / HTTP/1.1 \r\nHost: h\r\n\r\n",
    b"POST /a b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"P(ST / HTTP/1.1\r\nHost: h\r\n\r\n",
]


@pytest.mark.parametrize("raw", SMUGGLING)
def test_ambiguous_framing_and_malformed_heads_are_400(raw: bytes) -> None:
    with pytest.raises(HTTPError) as exc:
        HeadReader().feed(raw)
    assert exc.value.status == 400, exc.value.reason


def test_a_bare_lf_head_is_refused_without_waiting_for_more() -> None:
    with pytest.raises(HTTPError) as exc:
        HeadReader().feed(b"GET / HTTP/1.1\nHost: h\n\n")
    assert exc.value.status == 400


def test_other_versions_are_505() -> None:
    for raw in (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                b"GET / HTTP/1.2\r\nHost: h\r\n\r\n"):
        with pytest.raises(HTTPError) as exc:
            HeadReader().feed(raw)
        assert exc.value.status == 505


def test_head_size_and_field_count_bounds_are_431() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 60000)[0] is None
    with pytest.raises(HTTPError) as exc:
        reader.feed(b"a" * 6000)
    assert exc.value.status == 431
    many = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 100 + b"\r\n"
    with pytest.raises(HTTPError) as exc:
        HeadReader().feed(many)
    assert exc.value.status == 431
    ok = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 99 + b"\r\n"
    assert HeadReader().feed(ok)[0] is not None


def test_request_framing_and_keep_alive() -> None:
    def head(raw: bytes) -> http1.Head:
        h, _ = HeadReader().feed(raw)
        assert h is not None
        return h
    h = head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n")
    assert (h.body, h.length, h.keep_alive) == (LENGTH, 12, True)
    h = head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 7, 7\r\n\r\n")
    assert (h.body, h.length) == (LENGTH, 7)
    h = head(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, Chunked\r\nConnection: close\r\n\r\n")
    assert (h.body, h.keep_alive) == (CHUNKED, False)
    h = head(b"GET / HTTP/1.0\r\n\r\n")
    assert (h.body, h.keep_alive, h.version) == (NONE, False, 10)
    h = head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert h.keep_alive
    h = head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert h.upgrade
    h = head(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert h.expect_continue and h.get(b"expect") == b"100-continue"
    h = head(b"\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n")  # stray CRLFs between pipelined requests
    assert h.target == b"/x"


def test_response_framing() -> None:
    def resp(raw: bytes, method: bytes = b"GET") -> http1.Head:
        h, _ = HeadReader(response=True).feed(raw, method)
        assert h is not None
        return h
    h = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert (h.status, h.body, h.length, h.keep_alive) == (200, LENGTH, 5, True)
    assert resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD").body == NONE
    for code in (b"100", b"204", b"304"):
        assert resp(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 5\r\n\r\n").body == NONE
    h = resp(b"HTTP/1.1 200 OK\r\n\r\n")
    assert (h.body, h.keep_alive) == (CLOSE, False)
    h = resp(b"HTTP/1.1 200\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (h.body, h.keep_alive) == (CHUNKED, True)
    h = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert (h.body, h.keep_alive) == (CLOSE, False)
    h = resp(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert (h.body, h.keep_alive) == (NONE, False)
    assert resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n").upgrade
    for bad in (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                b"ICY 200 OK\r\n\r\n"):
        with pytest.raises(HTTPError) as exc:
            HeadReader(response=True).feed(bad, b"GET")
        assert exc.value.status == 502


def chunked(pieces: list[bytes], trailers: list[bytes]) -> bytes:
    out = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces if p)
    return out + b"0\r\n" + b"".join(t + b"\r\n" for t in trailers) + b"\r\n"


@given(pieces=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
       trailers=st.lists(st.sampled_from([b"X-A: 1", b"Digest: abc"]), max_size=2),
       cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8), after=st.binary(max_size=20))
def test_chunked_body_ends_exactly_where_it_ends_in_any_split(pieces: list[bytes], trailers: list[bytes],
                                                              cuts: list[int], after: bytes) -> None:
    body = chunked(pieces, trailers)
    data = body + after
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    framer = Body(CHUNKED)
    start = consumed = 0
    for p in points:
        piece = data[start:p]
        end = framer.feed(piece)
        consumed += end
        if framer.done:
            assert end <= len(piece)
            break
        assert end == len(piece)
        start = p
    assert framer.done
    assert consumed == len(body)


def test_length_body_counts_and_stops() -> None:
    b = Body(LENGTH, 10)
    assert b.feed(b"12345") == 5 and not b.done
    assert b.feed(b"67890GET /") == 5 and b.done
    assert Body(NONE).done and Body(LENGTH, 0).done
    c = Body(CLOSE)
    assert c.feed(b"abc") == 3 and not c.done and c.eof()
    assert not Body(LENGTH, 3).eof()


@pytest.mark.parametrize("bad", [b"zz\r\n", b"5\r\nabcdeXY", b"5\nabcde\r\n", b"-1\r\n",
                                 b"1234567890abcdef0\r\n", b"0\r\nBad Trailer\r\n\r\n", b" 5\r\n"])
def test_bad_chunked_framing_is_refused(bad: bytes) -> None:
    with pytest.raises(HTTPError):
        Body(CHUNKED).feed(bad)


def test_chunk_size_line_bound() -> None:
    b = Body(CHUNKED)
    b.feed(b"5;" + b"e" * 4000)
    with pytest.raises(HTTPError):
        b.feed(b"e" * 200)


@pytest.mark.parametrize(("target", "path"), [
    (b"/", b"/"), (b"/a/b?x=/admin", b"/a/b"), (b"//admin", b"/admin"), (b"/x/../admin", b"/admin"),
    (b"/./admin/.", b"/admin/"), (b"/%61dmin", b"/admin"), (b"/a/%2e%2e/admin", b"/admin"),
    (b"http://h:1/admin?q", b"/admin"), (b"http://h", b"/"), (b"*", b"*"), (b"/../../x", b"/x"),
    (b"/%7Euser", b"/~user"), (b"/%20", b"/%20"),
])
def test_request_path_normalises_for_authorization(target: bytes, path: bytes) -> None:
    assert http1.request_path(target) == path


@pytest.mark.parametrize("target", [b"/a%2fadmin", b"/a%5Cb", b"/a\\b", b"example.com", b"h:80", b"/a#frag"])
def test_request_paths_a_server_could_read_otherwise_are_400(target: bytes) -> None:
    with pytest.raises(HTTPError) as exc:
        http1.request_path(target)
    assert exc.value.status == 400


def test_parser_speed_is_reported() -> None:
    """Not an assertion on time (a shared machine): the figure for the report, printed with -s."""
    import timeit
    req = (b"GET /api/v1/items?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n"
           b"X-Request-Id: abcdef\r\n\r\n")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\nServer: x\r\n\r\nHello, world!"
    reader, rreader = HeadReader(), HeadReader(response=True)

    def one() -> None:
        head, _ = reader.feed(req)
        assert head is not None
        http1.request_path(head.target)
        rhead, rest = rreader.feed(resp, head.method)
        assert rhead is not None
        Body(rhead.body, rhead.length).feed(rest)
    n = 2000
    per = min(timeit.repeat(one, number=n, repeat=3)) / n
    print(f"http1: {per * 1e6:.1f} us per request + response head")
    assert per < 0.01  # only a gross regression (10 ms) fails


def test_lazy_headers_split_on_first_read_and_read_as_the_list() -> None:
    head = http1.parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nX-One:  1 \r\n\r\n")
    lazy = LazyHeaders(head)
    assert head._headers is None  # nothing split yet
    assert list(lazy) == [(b"host", b"a"), (b"x-one", b"1")] == head.headers
    assert len(lazy) == 2 and lazy[1] == (b"x-one", b"1") and lazy[:1] == [(b"host", b"a")]


# ---------------------------------------------------------------------- red-team findings 3, 4, 6, 14

SIZE_LINES = st.sampled_from([b"%x", b"%X", b"0%x", b"00000000000000%x", b"000000000000000%x", b"%x;e=1", b"%x \t",
                              b"%x\t;" + b"e" * 64, b"%x;" + b"e" * 65, b"%x" + b" " * 17, b"%x;a\x00"])


@given(pieces=st.lists(st.tuples(st.binary(min_size=1, max_size=40), SIZE_LINES), max_size=30),
       cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
       mutation=st.one_of(st.none(), st.tuples(st.integers(min_value=0, max_value=3000), st.binary(max_size=3))))
def test_the_small_chunk_fast_path_frames_exactly_as_the_general_path(
        pieces: list[tuple[bytes, bytes]], cuts: list[int], mutation: tuple[int, bytes] | None) -> None:
    """Finding 14: runs of 1-15 byte chunks are matched by one regex; any body, valid or not, in any split,
    must end (or be refused) exactly where the chunk-by-chunk parser ends it."""
    data = b"".join(fmt % len(p) + b"\r\n" + p + b"\r\n" for p, fmt in pieces) + b"0\r\n\r\nGET /next"
    if mutation is not None:
        at = mutation[0] % (len(data) + 1)
        data = data[:at] + mutation[1] + data[at + len(mutation[1]):]
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]

    def run() -> tuple[str, int]:
        framer = Body(CHUNKED)
        start = 0
        try:
            for p in points:
                end = framer.feed(data[start:p])
                if framer.done:
                    return "done", start + end
                start = p
        except HTTPError:
            return "refused", start
        return "more", start

    fast = run()
    saved = http1._SMALL_CHUNKS
    http1._SMALL_CHUNKS = http1.re.compile(rb"(?!)")  # never matches: every chunk takes the general path
    try:
        general = run()
    finally:
        http1._SMALL_CHUNKS = saved
    assert fast == general


def test_one_byte_chunks_are_framed_in_one_pass_per_read() -> None:
    """10 MB of one-byte chunks in 64 KiB reads: the general path runs only at a read's edges."""
    data = b"1\r\nx\r\n" * ((10 << 20) // 6) + b"0\r\n\r\n"
    framer = Body(CHUNKED)
    calls = 0
    real = http1._CHUNK_SIZE

    class Counting:
        def fullmatch(self, line: bytes) -> object:
            nonlocal calls
            calls += 1
            return real.fullmatch(line)

    http1._CHUNK_SIZE = Counting()  # type: ignore[assignment]
    try:
        for at in range(0, len(data), 65536):
            framer.feed(data[at:at + 65536])
    finally:
        http1._CHUNK_SIZE = real
    assert framer.done
    assert calls <= 2 * (len(data) // 65536 + 2), calls


def test_upgrades_other_than_websocket_are_stripped_from_requests() -> None:
    """Finding 6: h2c (or any other upgrade) never reaches the app, so no 101 can open an unauthorized tunnel;
    a websocket upgrade is relayed as it is (Consul configures Envoy so)."""
    def head(raw: bytes) -> http1.Head:
        h, _ = HeadReader().feed(raw)
        assert h is not None
        return h
    h = head(b"GET /p HTTP/1.1\r\nHost: db\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
             b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nX-A: 1\r\n\r\n")
    assert (h.raw, h.upgrade) == (b"GET /p HTTP/1.1\r\nHost: db\r\nX-A: 1\r\n\r\n", False)
    h = head(b"GET /p HTTP/1.1\r\nHost: db\r\nconnection: keep-alive, upgrade\r\nupgrade: H2C\r\n\r\n")
    assert h.raw == b"GET /p HTTP/1.1\r\nHost: db\r\nconnection: keep-alive\r\n\r\n" and h.keep_alive
    h = head(b"GET /p HTTP/1.1\r\nHost: db\r\nUpgrade: websocket\r\n\r\n")  # not a valid upgrade request
    assert h.raw == b"GET /p HTTP/1.1\r\nHost: db\r\n\r\n"
    h = head(b"GET /p HTTP/1.1\r\nHost: db\r\nConnection: upgrade\r\nUpgrade: websocket, h2c\r\n\r\n")
    assert h.raw == b"GET /p HTTP/1.1\r\nHost: db\r\n\r\n" and not h.upgrade
    h = head(b"GET /p HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")  # none in HTTP/1.0
    assert h.raw == b"GET /p HTTP/1.0\r\n\r\n" and not h.upgrade
    ws = b"GET /p HTTP/1.1\r\nHost: db\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n"
    h = head(ws)
    assert (h.raw, h.upgrade) == (ws, True)


def test_fragments_and_transfer_encoding_in_http10_are_refused() -> None:
    """Findings 3 and 4 (RFC 9112 3.2 and 6.1)."""
    for raw, status in ((b"GET /public#/../admin HTTP/1.1\r\nHost: db\r\n\r\n", 400),
                        (b"GET /p?q=1#x HTTP/1.1\r\nHost: db\r\n\r\n", 400),
                        (b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
                        (b"POST /x HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 400)):
        with pytest.raises(HTTPError) as exc:
            HeadReader().feed(raw)
        assert exc.value.status == status, raw
    with pytest.raises(HTTPError) as exc:
        HeadReader(response=True).feed(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET")
    assert exc.value.status == 502


# The fast path (one regex per common head) must agree with the general path on every head, whether it takes
# it or not: same fields out, or the same refusal.
_NAMES = st.sampled_from([b"Host", b"host", b"HOST", b"Content-Length", b"content-length", b"Transfer-Encoding",
                          b"Connection", b"Expect", b"Upgrade", b"Content-Type", b"X-A", b"Hostx", b"Host ",
                          b"content-lengthx", b"accept", b"Cookie", b"h\x00st", b"Ho:st"])
_VALUES = st.sampled_from([b"", b" 12", b"12 ", b"\t0\t", b"a.example:80", b"007", b"1,1", b"1, 2", b"chunked",
                           b"close", b"keep-alive", b"upgrade", b"websocket", b"100-continue", b"x\ry", b"\xff",
                           b"-1", b"9" * 19, b"text/plain"])
_FIELDS = st.lists(st.tuples(_NAMES, _VALUES), max_size=6)


def _shape(head: http1.Head) -> tuple[object, ...]:
    return (head.raw, head.headers, head.version, head.body, head.length, head.keep_alive, head.method,
            head.target, head.status, head.expect_continue, head.upgrade)


def _either(parse: object, *args: bytes) -> object:
    try:
        return _shape(parse(*args))  # type: ignore[operator]
    except HTTPError as exc:
        return (exc.status, exc.reason)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"GET / HTTP/1.1", b"POST /a?b HTTP/1.1", b"GET / HTTP/1.0", b"GET /# HTTP/1.1",
                        b"get  / HTTP/1.1", b"PUT http://x/y HTTP/1.1"]), _FIELDS)
def test_fast_request_path_agrees_with_the_general_one(line: bytes, fields: list[tuple[bytes, bytes]]) -> None:
    raw = line + b"\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in fields) + b"\r\n"
    assert _either(http1.parse_request, raw) == _either(http1._parse_request, raw)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 101 Switching", b"HTTP/1.0 200",
                        b"HTTP/1.1 304", b"HTTP/1.1 100 Continue", b"HTTP/1.1 099 X", b"HTTP/1.1 500 \x01"]),
       _FIELDS, st.sampled_from([b"GET", b"HEAD"]))
def test_fast_response_path_agrees_with_the_general_one(line: bytes, fields: list[tuple[bytes, bytes]],
                                                        method: bytes) -> None:
    raw = line + b"\r\n" + b"".join(n + b":" + v + b"\r\n" for n, v in fields) + b"\r\n"
    assert _either(http1.parse_response, raw, method) == _either(http1._parse_response, raw, method)


def test_the_fast_path_takes_common_heads_and_counts_fields() -> None:
    assert http1._FAST_REQUEST.fullmatch(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    assert http1._FAST_RESPONSE.fullmatch(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n")
    many = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"x: y\r\n" * 100 + b"\r\n"  # 101 fields
    with pytest.raises(HTTPError) as exc:
        http1.parse_request(many)
    assert exc.value.status == 431
    resp = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n" + b"x: y\r\n" * 100 + b"\r\n"
    with pytest.raises(HTTPError) as exc:
        http1.parse_response(resp)
    assert exc.value.status == 502


def test_fast_paths_agree_on_every_single_field_head() -> None:
    names, values = _NAMES.elements, _VALUES.elements  # type: ignore[attr-defined]
    singles = [[(n, v)] for n in names for v in values]
    cases = singles + [[*f, (b"X-A", b"b")] for f in singles] + [[(b"Host", b"a"), *f] for f in singles]
    for fields in cases:
        block = b"".join(n + b":" + v + b"\r\n" for n, v in fields) + b"\r\n"
        for line in (b"GET / HTTP/1.1", b"GET / HTTP/1.0"):
            raw = line + b"\r\n" + block
            assert _either(http1.parse_request, raw) == _either(http1._parse_request, raw), raw
        for line in (b"HTTP/1.1 200 OK", b"HTTP/1.1 204", b"HTTP/1.1 101 S", b"HTTP/1.1 100", b"HTTP/1.0 200"):
            for method in (b"GET", b"HEAD"):
                raw = line + b"\r\n" + block
                assert _either(http1.parse_response, raw, method) == _either(http1._parse_response, raw, method), raw
