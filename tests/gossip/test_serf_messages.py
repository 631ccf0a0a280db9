"""gossip.serf_messages: Serf's messages inside memberlist user messages, tags, filters, internal queries."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.gossip import serf_messages as sm
from meshagent.gossip.messages import MessageError


def _go(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=False)
    return packed


def test_type_bytes_match_messages_go() -> None:
    assert [t.value for t in sm.SerfMessageType] == list(range(10))
    assert sm.SerfMessageType.USER_EVENT == 3 and sm.SerfMessageType.RELAY == 9
    assert (sm.QUERY_FLAG_ACK, sm.QUERY_FLAG_NO_BROADCAST) == (1, 2)


def test_join_golden_bytes() -> None:
    data = sm.encode(sm.JoinMsg(ltime=5, node="a"))
    assert data == b"\x01\x82\xa5LTime\x05\xa4Node\xa1a"
    assert sm.decode(data) == sm.JoinMsg(ltime=5, node="a")


def test_user_event_fields_in_go_order() -> None:
    data = sm.encode(sm.UserEventMsg(ltime=7, name="deploy", payload=b"\x00v1", cc=True))
    assert data[0] == 3
    assert data[1:] == _go({"LTime": 7, "Name": "deploy", "Payload": b"\x00v1", "CC": True})
    assert sm.decode(data) == sm.UserEventMsg(ltime=7, name="deploy", payload=b"\x00v1", cc=True)


def test_query_round_trip_and_flags() -> None:
    query = sm.QueryMsg(
        ltime=3, id=0xDEADBEEF, addr=b"\x7f\x00\x00\x01", port=7946, source_node="n1",
        filters=(sm.encode_node_filter(["a", "b"]), sm.encode_tag_filter("role", "web.*")),
        flags=sm.QUERY_FLAG_ACK, relay_factor=2, timeout_ns=15_000_000_000, name=sm.PING_QUERY, payload=b"",
    )
    data = sm.encode(query)
    raw = {k.decode(): v for k, v in msgpack.unpackb(data[1:], raw=True).items()}
    assert list(raw) == ["LTime", "ID", "Addr", "Port", "SourceNode", "Filters", "Flags", "RelayFactor",
                         "Timeout", "Name", "Payload"]
    assert raw["Timeout"] == 15_000_000_000  # time.Duration: int64 nanoseconds
    back = sm.decode(data)
    assert back == query and back.ack and not back.no_broadcast
    assert [sm.decode_filter(f) for f in back.filters] == [sm.NodeFilter(("a", "b")), sm.TagFilter("role", "web.*")]


def test_query_response_ack() -> None:
    ack = sm.QueryResponseMsg(ltime=3, id=9, from_node="s1", flags=sm.QUERY_FLAG_ACK)
    assert sm.decode(sm.encode(ack)) == ack and ack.ack
    assert not sm.QueryResponseMsg(payload=b"x").ack


def test_leave_and_missing_fields_take_go_zero_values() -> None:
    assert sm.decode(sm.encode(sm.LeaveMsg(ltime=2, node="x", prune=True))) == sm.LeaveMsg(2, "x", True)
    assert sm.decode(b"\x00" + _go({"Node": "x"})) == sm.LeaveMsg(ltime=0, node="x", prune=False)
    assert sm.decode(b"\x04" + _go({"Filters": None, "Payload": None})) == sm.QueryMsg()


def test_push_pull_with_ring_buffer_holes() -> None:
    events = (None, sm.UserEvents(ltime=4, events=(sm.UserEvent("e", b"p"), sm.UserEvent("f", b""))), None)
    pp = sm.PushPullMsg(ltime=9, status_ltimes={"s1": 1, "s2": 8}, left_members=("s3",), event_ltime=5,
                        events=events, query_ltime=2)
    data = sm.encode(pp)
    raw = msgpack.unpackb(data[1:], raw=False)
    assert raw["Events"][0] is None and raw["Events"][1]["Events"][0] == {"Name": "e", "Payload": "p"}
    assert sm.decode(data) == pp


def test_key_request_response_and_list_keys_shape() -> None:
    assert sm.key_request_payload(b"k" * 16) == b"\x07" + _go({"Key": b"k" * 16})
    assert sm.key_request_payload(b"") == b"\x07\x81\xa3Key\xa0"  # what `serf keys -list` sends
    resp = sm.KeyResponseMsg(result=True, message="", keys=("a2V5",), primary_key="a2V5")
    data = sm.encode(resp)
    assert data[1:] == _go({"Result": True, "Message": "", "Keys": ["a2V5"], "PrimaryKey": "a2V5"})
    assert sm.decode(data) == resp
    # Go's nil slice for Keys (install/use/remove answers) decodes as empty.
    assert sm.decode(b"\x08" + _go({"Result": False, "Message": "no", "Keys": None, "PrimaryKey": ""})).keys == ()


def test_internal_query_names() -> None:
    names = [sm.PING_QUERY, sm.CONFLICT_QUERY, sm.INSTALL_KEY_QUERY, sm.USE_KEY_QUERY, sm.REMOVE_KEY_QUERY,
             sm.LIST_KEYS_QUERY]
    assert names == ["_serf_ping", "_serf_conflict", "_serf_install-key", "_serf_use-key", "_serf_remove-key",
                     "_serf_list-keys"]
    assert all(n.startswith(sm.INTERNAL_QUERY_PREFIX) for n in names)


def test_conflict_response_member_and_nil() -> None:
    member = sm.Member(name="s1", addr=b"\x7f\x00\x00\x01", port=7946, tags={"role": "x"},
                       status=sm.MemberStatus.ALIVE, protocol_min=1, protocol_max=5, protocol_cur=2,
                       delegate_min=2, delegate_max=5, delegate_cur=4)
    data = sm.encode(sm.ConflictResponseMsg(member))
    assert data[0] == 6 and sm.decode(data) == sm.ConflictResponseMsg(member)
    assert sm.encode(sm.ConflictResponseMsg(None)) == b"\x06\xc0"
    assert sm.decode(b"\x06\xc0") == sm.ConflictResponseMsg(None)


def test_relay_wraps_a_whole_message() -> None:
    inner = sm.encode(sm.QueryResponseMsg(ltime=1, id=2, from_node="s2", payload=b"ok"))
    relay = sm.RelayMsg(dest_addr=b"\x7f\x00\x00\x05", dest_port=7946, dest_name="s9", message=inner)
    data = sm.encode(relay)
    assert data[0] == 9 and data.endswith(inner)
    header = msgpack.Unpacker(raw=False)
    header.feed(data[1:])
    assert header.unpack() == {"DestAddr": {"IP": "\x7f\x00\x00\x05", "Port": 7946, "Zone": ""}, "DestName": "s9"}
    back = sm.decode(data)
    assert back == relay and sm.decode(back.message) == sm.decode(inner)


def test_tags_encoding() -> None:
    assert sm.encode_tags({"role": "x"}) == b"\xff\x81\xa4role\xa1x"  # as serf 0.8 sends it
    tags = {"role": "web", "dc": "eu", "empty": ""}
    assert sm.decode_tags(sm.encode_tags(tags)) == tags
    assert sm.encode_tags({"role": "db", "x": "y"}, legacy=True) == b"db"
    assert sm.decode_tags(b"db") == {"role": "db"}
    assert sm.decode_tags(b"") == {"role": ""}
    with pytest.raises(MessageError):
        sm.decode_tags(b"\xff\x92\x01\x02")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x0a\x80",
        b"\x01\x81\xa5LTime\xff",  # negative LTime
        b"\x01\x81\xa5LTime\xa1x",
        b"\x04\x81\xa4Port\xce\x00\x01\x00\x00",  # Port over uint16
        b"\x04\x81\xa7Filters\x91\x01",
        b"\x03\x81\xa2CC\x01",
        b"\x02\x81\xacStatusLTimes\x91\x01",
        b"\x02\x81\xa6Events\x91\x05",
        b"\x09\x81",
        b"\x09\x81\xa8DestAddr\x05",
        b"\x01\x92",
        b"\x01\x80\x00",
    ],
)
def test_malformed_messages_raise_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        sm.decode(data)


def test_malformed_filters() -> None:
    for data in (b"", b"\x02\x90", b"\x00\x05", b"\x01\x91\x01"):
        with pytest.raises(MessageError):
            sm.decode_filter(data)


_names = st.text(max_size=20)
_u64 = st.integers(0, 2**64 - 1)


@settings(max_examples=200, deadline=None)
@given(st.builds(sm.UserEventMsg, ltime=_u64, name=_names, payload=st.binary(max_size=50), cc=st.booleans())
       | st.builds(sm.PushPullMsg, ltime=_u64, status_ltimes=st.dictionaries(_names, _u64, max_size=5),
                   left_members=st.lists(_names, max_size=3).map(tuple), event_ltime=_u64,
                   events=st.lists(st.none() | st.builds(
                       sm.UserEvents, ltime=_u64,
                       events=st.lists(st.builds(sm.UserEvent, name=_names, payload=st.binary(max_size=9)),
                                       max_size=3).map(tuple)), max_size=4).map(tuple),
                   query_ltime=_u64)
       | st.builds(sm.QueryMsg, ltime=_u64, id=st.integers(0, 2**32 - 1), port=st.integers(0, 65535),
                   timeout_ns=st.integers(-(2**63), 2**63 - 1), relay_factor=st.integers(0, 255),
                   filters=st.lists(st.binary(max_size=9), max_size=3).map(tuple), name=_names))
def test_round_trip_property(msg: sm.SerfMessage) -> None:
    assert sm.decode(sm.encode(msg)) == msg


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_only_raise_message_error(data: bytes) -> None:
    try:
        sm.decode(data)
    except MessageError:
        pass
