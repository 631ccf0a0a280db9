"""Our codec against a real Debian `serf agent`: plain UDP/TCP sockets in the test, our framing on the wire.

A fake member ("fake1") lives on a UDP socket next to serf; a thread answers serf's pings so that it stays
alive, and records everything serf sends it. Serf itself is started by PID and killed in a fixture.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest
from meshagent.gossip import messages as m
from meshagent.gossip import serf_messages as sm
from meshagent.gossip import wire
from meshagent.gossip.keyring import Keyring
from meshagent.gossip.membership import Swim
from meshagent.gossip.tunables import GossipConfig

from tests.support.gossip_harness import Rec
from tests.support.ports import ports_free
from tests.support.serf_rpc import SerfAgent, SerfRPC
from tests.support.wait import wait_for

SERF = shutil.which("serf") or "/usr/bin/serf"
pytestmark = pytest.mark.skipif(not os.path.exists(SERF), reason="Debian's serf binary (/usr/bin/serf) is missing")

KEY = bytes(range(32))
WRONG_KEY = bytes(range(100, 132))
T = TypeVar("T")


def _pick_addresses() -> tuple[str, int, int, int]:
    """An IP in 127.0.0.150-199 with three free ports: serf gossip, serf RPC, our fake member."""
    rng = random.Random()
    for _ in range(200):
        ip = f"127.0.0.{rng.randint(150, 199)}"
        base = 17946 + rng.randrange(0, 400) * 4
        ports = (base, base + 1, base + 2)
        if ports_free(ip, ports):
            return ip, *ports
    raise RuntimeError("no free 127.0.0.150-199 address and ports")


@dataclass
class Serf:
    """A running serf agent and how to reach it."""

    agent: SerfAgent
    ip: str
    port: int
    rpc: str
    fake_port: int
    keyring: Keyring | None

    def cli(self, command: str, *args: str) -> str:
        """Run `serf <command>` against this agent's RPC address (flags before positional arguments)."""
        argv = [SERF, command, f"-rpc-addr={self.rpc}", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def serf(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Serf]:
    """One serf agent (s1, tag role=x), plaintext or with -encrypt KEY."""
    yield from _start_serf(tmp_path, encrypted=request.param)


@pytest.fixture
def encrypted_serf(tmp_path: Path) -> Iterator[Serf]:
    """One serf agent with -encrypt KEY."""
    yield from _start_serf(tmp_path, encrypted=True)


def _start_serf(tmp_path: Path, *, encrypted: bool) -> Iterator[Serf]:
    ip, port, rpc_port, fake_port = _pick_addresses()
    agent = SerfAgent(node="s1", bind=f"{ip}:{port}", rpc=f"{ip}:{rpc_port}", workdir=tmp_path,
                      encrypt=base64.b64encode(KEY).decode() if encrypted else None, tags={"role": "x"})
    try:
        agent.start()
        yield Serf(agent, ip, port, agent.rpc, fake_port, Keyring([KEY]) if encrypted else None)
    finally:
        agent.kill()


class FakeMember:
    """Our side: a UDP socket that answers serf's pings and keeps everything serf sends it."""

    def __init__(self, serf: Serf, name: str = "fake1", keyring: Keyring | None = None) -> None:
        self.serf = serf
        self.name = name
        self.keyring = keyring
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((serf.ip, serf.fake_port))
        self.sock.settimeout(0.05)
        self.lock = threading.Lock()
        self.received: list[m.Message] = []
        self.errors: list[Exception] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def node_state(self) -> m.PushNodeState:
        """How we describe ourselves in a push-pull."""
        return m.PushNodeState(name=self.name, addr=socket.inet_aton(self.serf.ip), port=self.serf.fake_port,
                               meta=sm.encode_tags({"role": "fake"}), incarnation=1, state=m.NodeState.ALIVE)

    def send(self, *msgs: bytes) -> None:
        """One packet to serf."""
        self.sock.sendto(wire.pack_packet(list(msgs), keyring=self.keyring), (self.serf.ip, self.serf.port))

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except (TimeoutError, OSError):
                continue
            try:
                leaves = wire.unpack_packet(data, keyring=self.keyring)
                decoded = [m.decode(leaf) for leaf in leaves]
            except ValueError as exc:
                with self.lock:
                    self.errors.append(exc)
                continue
            for msg in decoded:
                if isinstance(msg, m.Ping) and msg.node == self.name:
                    to = (socket.inet_ntoa(msg.source_addr), msg.source_port) if msg.source_port else addr
                    self.sock.sendto(wire.pack_packet([m.encode(m.AckResp(seq_no=msg.seq_no))],
                                                      keyring=self.keyring), to)
            with self.lock:
                self.received.extend(decoded)

    def find(self, predicate: Callable[[m.Message], T | None], timeout: float = 10.0, what: str = "a message") -> T:
        """Wait until a received message satisfies `predicate` (which returns what to give back)."""
        def check() -> T | None:
            with self.lock:
                for msg in self.received:
                    found = predicate(msg)
                    if found is not None:
                        return found
            return None
        return wait_for(check, timeout, what=what)

    def close(self) -> None:
        """Stop answering and close the socket."""
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def fake(serf: Serf) -> Iterator[FakeMember]:
    """Our fake member, keyed like serf."""
    member = FakeMember(serf, keyring=serf.keyring)
    try:
        yield member
    finally:
        member.close()


def _udp_exchange(serf: Serf, packet: bytes, keyring: Keyring | None, timeout: float) -> list[bytes]:
    """Send one packet from a fresh socket; every packet that comes back within `timeout`, raw."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((serf.ip, 0))
        sock.sendto(packet, (serf.ip, serf.port))
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                got.append(sock.recvfrom(65536)[0])
            except TimeoutError:
                break
        return got


def _wait_ack(serf: Serf, seq: int, keyring: Keyring | None, timeout: float) -> tuple[m.AckResp, bytes] | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((serf.ip, 0))
        ping = m.encode(m.Ping(seq_no=seq, node="s1"))
        sock.sendto(wire.pack_packet([ping], keyring=keyring), (serf.ip, serf.port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recvfrom(65536)[0]
            except TimeoutError:
                return None
            for leaf in wire.unpack_packet(data, keyring=keyring):
                msg = m.decode(leaf)
                if isinstance(msg, m.AckResp) and msg.seq_no == seq:
                    return msg, data
    return None


def _stream(serf: Serf, data: bytes, keyring: Keyring | None, reader: wire.StreamReader | None = None,
            timeout: float = 10.0) -> wire.StreamMessage:
    """Open a TCP stream to serf, write `data`, read one framed answer (with `reader` if given)."""
    with socket.create_connection((serf.ip, serf.port), timeout=timeout) as conn:
        conn.sendall(data)
        reader = reader or wire.StreamReader(keyring=keyring)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return reader.eof()
            result = reader.feed(chunk)
            if result is not None:
                return result


def _join(serf: Serf, fake: FakeMember) -> wire.PushPull:
    state = sm.encode(sm.PushPullMsg(ltime=1, status_ltimes={fake.name: 1}))
    answer = _stream(serf, wire.push_pull_stream([fake.node_state()], state, join=True, keyring=fake.keyring),
                     fake.keyring)
    assert isinstance(answer, wire.PushPull), answer
    return answer


def _members(serf: Serf) -> dict[str, list[str]]:
    rows = [line.split() for line in serf.cli("members").splitlines() if line.strip()]
    return {row[0]: row[1:] for row in rows}


def _user_event_stream(serf: Serf) -> SerfRPC:
    """An RPC connection streaming serf's user events, known to be live.

    Serf answers the stream request *before* it registers the handler, so events right after the answer
    can be lost: fire marker events through RPC until one comes back on the stream."""
    stream = serf.agent.rpc_client()
    stream.stream_user_events()
    firer = serf.agent.rpc_client()
    try:
        def marker_seen() -> bool:
            firer.event("stream-ready", b"")
            record = stream.next_event(timeout=0.2)
            return bool(record and record.get("Name") == "stream-ready")
        wait_for(marker_seen, 10.0, what="serf's user event stream to be live")
    except BaseException:
        stream.close()
        raise
    finally:
        firer.close()
    return stream


def _user_events(stream: SerfRPC, names: set[str], timeout: float = 10.0) -> dict[str, bytes]:
    """Name -> payload of the user events called `names` that arrive within `timeout`."""
    seen: dict[str, bytes] = {}
    deadline = time.monotonic() + timeout
    while seen.keys() != names and (left := deadline - time.monotonic()) > 0:
        record = stream.next_event(timeout=left)
        if record and record.get("Event") == "user" and record.get("Name") in names:
            seen[record["Name"]] = record["Payload"]
    return seen


# ------------------------------------------------------------------------------------------------ (a) ping


def test_udp_ping_gets_ack_with_same_seq(serf: Serf) -> None:
    found = _wait_ack(serf, 4242, serf.keyring, timeout=5.0)
    assert found is not None, "serf did not ack our ping"
    ack, raw = found
    assert ack.payload  # serf's ping delegate: its network coordinate
    if serf.keyring:
        assert raw[0] == 1  # sealed, encryption version 1
    else:
        assert raw[0] in (m.MessageType.ACK_RESP, m.MessageType.COMPOUND, m.MessageType.COMPRESS)


def test_ping_for_another_node_is_ignored(serf: Serf) -> None:
    ping = m.encode(m.Ping(seq_no=7, node="not-s1"))
    assert _udp_exchange(serf, wire.pack_packet([ping], keyring=serf.keyring), serf.keyring, 1.0) == []


def test_tcp_fallback_ping(serf: Serf) -> None:
    answer = _stream(serf, wire.ping_stream(m.Ping(seq_no=99, node="s1"), keyring=serf.keyring), serf.keyring)
    assert answer == m.AckResp(seq_no=99, payload=b"")


def test_ping_inside_crc_and_compressed_compound(serf: Serf) -> None:
    msgs = [m.encode(m.Ping(seq_no=500 + i, node="s1")) for i in range(12)]
    packet = wire.pack_packet(msgs, keyring=serf.keyring, crc=True, compress=True)
    assert wire.unpack_packet(packet, keyring=serf.keyring) == msgs
    seqs: set[int] = set()
    for raw in _udp_exchange(serf, packet, serf.keyring, 2.0):
        seqs.update(x.seq_no for x in map(m.decode, wire.unpack_packet(raw, keyring=serf.keyring))
                    if isinstance(x, m.AckResp))
    assert seqs == set(range(500, 512))


def test_compound_part_limit_for_memberlist_peers(serf: Serf) -> None:
    pings = [m.encode(m.Ping(seq_no=1000 + i, node="s1")) for i in range(128)]
    group, last = wire.split_for_packets(pings, 65_000)
    assert len(last) == 1
    assert len(group) == wire.SAFE_COMPOUND_PARTS == 127

    def acked(packet: bytes) -> set[int]:
        seqs: set[int] = set()
        for raw in _udp_exchange(serf, wire.pack_packet([packet], keyring=serf.keyring), serf.keyring, 1.5):
            seqs.update(x.seq_no for x in map(m.decode, wire.unpack_packet(raw, keyring=serf.keyring))
                        if isinstance(x, m.AckResp))
        return seqs

    assert acked(wire.make_compound(group)) == set(range(1000, 1127))
    # Why the limit: memberlist 0.2 sizes the length table in a uint8 and misreads 128 parts entirely.
    assert acked(wire.make_compound(pings)) == set()


def test_our_compressed_full_packets_are_read_whole_by_serf(serf: Serf) -> None:
    """The core compresses a full packet to fit more alive messages in (compress_when_full): serf must read
    every one of them, CRC and encryption included, and list those members."""
    swim = Swim(replace(GossipConfig(), gossip_nodes=1), "gossiper", socket.inet_aton(serf.ip), serf.fake_port,
                Rec(), random.Random(5))
    swim.start(0.0)
    vsn = bytes([1, 5, 2, 2, 5, 4])  # serf 0.9: memberlist protocol 1..5, so it wants a CRC
    s1 = m.Alive(1, "s1", socket.inet_aton(serf.ip), serf.port, sm.encode_tags({"role": "x"}), vsn)
    swim.receive(0.0, (serf.ip, serf.port), m.encode(s1))
    swim.broadcasts.clear()
    tags = {"role": "consul", "dc": "dc1", "vsn": "2", "vsn_min": "2", "vsn_max": "3", "build": "0.1.0",
            "segment": "", "port": "8300", "bootstrap": "1"}
    names = [f"joiner-{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        meta = sm.encode_tags({**tags, "id": f"00000000-0000-4000-8000-{i:012d}"})
        swim.receive(0.0, (serf.ip, serf.port), m.encode(m.Alive(1, name, socket.inet_aton(serf.ip),
                                                                   serf.fake_port + 1 + i, meta)))
    # A ping to serf, with the waiting news piggybacked, as a probe sends it.
    packet = swim._send((serf.ip, serf.port), [m.encode(m.Ping(31337, "s1"))])
    assert packet.crc  # serf speaks protocol 5: CRC
    assert packet.compressed is not None
    sent = [x.node for x in map(m.decode, packet.messages) if isinstance(x, m.Alive)]
    assert len(sent) >= 9  # five fit a plain packet
    data = wire.pack_packet([packet.payload()], keyring=serf.keyring, crc=packet.crc)
    assert len(data) <= GossipConfig().udp_buffer_size
    acks = {x.seq_no for raw in _udp_exchange(serf, data, serf.keyring, 1.0)
            for x in map(m.decode, wire.unpack_packet(raw, keyring=serf.keyring)) if isinstance(x, m.AckResp)}
    assert 31337 in acks
    listed = wait_for(lambda: (lambda rows: rows if set(sent) <= set(rows) else None)(_members(serf)), 10.0,
                      what="every member of our compressed packet in `serf members`")
    assert "dc=dc1" in " ".join(listed[sent[0]])


# ------------------------------------------------------------------------------------------------ (b) push-pull


def test_push_pull_answer(serf: Serf, fake: FakeMember) -> None:
    answer = _join(serf, fake)
    s1 = {node.name: node for node in answer.nodes}["s1"]
    assert (s1.addr, s1.port, s1.state) == (socket.inet_aton(serf.ip), serf.port, m.NodeState.ALIVE)
    assert sm.decode_tags(s1.meta) == {"role": "x"}
    assert s1.vsn[:3] == bytes([1, 5, 2])  # memberlist protocol 1..5, speaking 2
    state = sm.decode(answer.user_state)
    assert isinstance(state, sm.PushPullMsg)
    assert "s1" in state.status_ltimes and state.ltime >= 1
    assert len(state.events) == 512  # serf's whole event ring buffer, mostly nil


def test_large_compressed_push_pull_is_understood(serf: Serf) -> None:
    # 40 KB of random payload makes our LZW writer fill and reset its table several times; Go's reader
    # must agree byte for byte, or serf could not hand the event to its RPC stream intact.
    payload = random.Random(7).randbytes(40_000)
    state = sm.PushPullMsg(ltime=1, event_ltime=3, query_ltime=1,
                           events=(None, sm.UserEvents(ltime=2, events=(sm.UserEvent("big", payload),))))
    rpc = _user_event_stream(serf)
    try:
        data = wire.push_pull_stream([], sm.encode(state), join=False, keyring=serf.keyring, compress=True)
        assert isinstance(_stream(serf, data, serf.keyring), wire.PushPull)
        assert _user_events(rpc, {"big"}) == {"big": payload}
    finally:
        rpc.close()
    # And the other way: serf's next push-pull answer holds the event in its buffer, so Go's LZW writer
    # resets its table too, and our reader must follow.
    reader = wire.StreamReader(keyring=serf.keyring)
    answer = _stream(serf, wire.push_pull_stream([], b"", join=False, keyring=serf.keyring), serf.keyring, reader)
    assert isinstance(answer, wire.PushPull) and len(answer.user_state) > 40_000
    assert reader.compressed and reader.encrypted == (serf.keyring is not None)  # serf compresses every stream
    echoed = sm.decode(answer.user_state)
    assert isinstance(echoed, sm.PushPullMsg)
    remembered = [event for slot in echoed.events if slot is not None for event in slot.events]
    assert sm.UserEvent("big", payload) in remembered


# ------------------------------------------------------------------------------------------------ (c) our node state


def test_serf_lists_our_fake_member(serf: Serf, fake: FakeMember) -> None:
    _join(serf, fake)
    row = wait_for(lambda: _members(serf).get("fake1"), 10.0, what="fake1 in `serf members`")
    assert row[0] == f"{serf.ip}:{serf.fake_port}" and row[1] == "alive" and "role=fake" in row[2]
    # It keeps us alive because we answer its pings.
    fake.find(lambda x: x if isinstance(x, m.Ping) and x.node == "fake1" else None, what="a ping from serf")
    assert _members(serf)["fake1"][1] == "alive"


# ------------------------------------------------------------------------------------------------ (d) user events


def test_serf_user_event_reaches_us(serf: Serf, fake: FakeMember) -> None:
    _join(serf, fake)
    wait_for(lambda: "fake1" in _members(serf), 10.0, what="fake1 to be a member")
    serf.cli("event", "deploy", "v1.2.3")

    def user_event(msg: m.Message) -> sm.UserEventMsg | None:
        if isinstance(msg, m.UserMsg):
            event = sm.decode(msg.payload)
            if isinstance(event, sm.UserEventMsg) and event.name == "deploy":
                return event
        return None

    event = fake.find(user_event, 10.0, what="the deploy user event")
    assert event.payload == b"v1.2.3" and event.ltime >= 1 and event.cc is True
    assert fake.errors == []


def test_our_user_events_reach_serf(serf: Serf) -> None:
    rpc = _user_event_stream(serf)
    try:
        udp = sm.encode(sm.UserEventMsg(ltime=5, name="from-udp", payload=b"one"))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(wire.pack_packet([m.encode(m.UserMsg(udp))], keyring=serf.keyring), (serf.ip, serf.port))
        tcp = sm.encode(sm.UserEventMsg(ltime=6, name="from-tcp", payload=b"two"))
        with socket.create_connection((serf.ip, serf.port), timeout=5) as conn:
            conn.sendall(wire.user_msg_stream(tcp, keyring=serf.keyring, compress=True))
        assert _user_events(rpc, {"from-udp", "from-tcp"}) == {"from-udp": b"one", "from-tcp": b"two"}
    finally:
        rpc.close()


# ------------------------------------------------------------------------------------------------ (e) wrong key


def test_wrong_key_is_dropped_both_ways(encrypted_serf: Serf) -> None:
    serf = encrypted_serf
    wrong = Keyring([WRONG_KEY])
    assert _wait_ack(serf, 77, wrong, timeout=1.0) is None  # serf drops what it cannot open
    assert _wait_ack(serf, 78, None, timeout=1.0) is None  # and plaintext, since it verifies incoming
    found = _wait_ack(serf, 79, serf.keyring, timeout=5.0)
    assert found is not None
    with pytest.raises(wire.WireError, match="decrypt"):
        wire.unpack_packet(found[1], keyring=wrong)
    # On a stream serf answers a push-pull it cannot open with an error, sealed with its own key.
    with socket.create_connection((serf.ip, serf.port), timeout=5) as conn:
        conn.sendall(wire.push_pull_stream([], b"", join=True, keyring=wrong))
        sealed = b""
        while chunk := conn.recv(65536):
            sealed += chunk
    assert sealed[:1] == bytes([m.MessageType.ENCRYPT])
    with pytest.raises(wire.WireError, match="decrypt"):
        wire.StreamReader(keyring=wrong).feed(sealed)
    error = wire.StreamReader(keyring=serf.keyring).feed(sealed)
    assert isinstance(error, m.ErrResp) and "decrypt" in error.error.lower()


# ------------------------------------------------------------------------------------------------ keyring query


def test_list_keys_query_answered_by_our_member(encrypted_serf: Serf) -> None:
    serf = encrypted_serf
    fake = FakeMember(serf, keyring=serf.keyring)
    try:
        _join(serf, fake)
        wait_for(lambda: _members(serf).get("fake1", [None, None])[1] == "alive", 10.0, what="fake1 alive")
        answered = threading.Event()

        def answer_queries() -> None:
            query = fake.find(_list_keys_query, 20.0, what="the list-keys query")
            body = sm.encode(sm.KeyResponseMsg(result=True, keys=(base64.b64encode(KEY).decode(),),
                                               primary_key=base64.b64encode(KEY).decode()))
            response = sm.encode(sm.QueryResponseMsg(ltime=query.ltime, id=query.id, from_node="fake1",
                                                     payload=body))
            fake.sock.sendto(wire.pack_packet([m.encode(m.UserMsg(response))], keyring=fake.keyring),
                             (socket.inet_ntoa(query.addr), query.port))
            answered.set()

        helper = threading.Thread(target=answer_queries, daemon=True)
        helper.start()
        out = serf.cli("keys", "-list")
        helper.join(5)
        assert answered.is_set()
        assert f"{base64.b64encode(KEY).decode()} [2/2]" in out.replace("  ", " ")
    finally:
        fake.close()


def _list_keys_query(msg: m.Message) -> sm.QueryMsg | None:
    if isinstance(msg, m.UserMsg):
        query = sm.decode(msg.payload)
        if isinstance(query, sm.QueryMsg) and query.name == sm.LIST_KEYS_QUERY:
            assert sm.decode(query.payload) == sm.KeyRequestMsg(key=b"")
            return query
    return None
