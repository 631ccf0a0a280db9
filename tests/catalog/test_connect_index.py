"""The catalog's mesh index: sidecars and Connect-native instances by the service they front, and the
`connect:<name>` watch key that wakes their readers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from meshagent.agent.catalog import CRITICAL, PASSING, Catalog, Check, Node, Service, commands
from meshagent.agent.catalog.state import connect_target


class Recorder:
    """Collects the changed watch keys of every apply."""

    def __init__(self, cat: Catalog) -> None:
        self.events: list[frozenset[str]] = []
        cat.add_listener(lambda _i, keys: self.events.append(keys))

    def last(self) -> frozenset[str]:
        return self.events[-1]


def apply(cat: Catalog, command: dict[str, Any]) -> int:
    index = cat.last_index + 1
    cat.apply(index, command)
    return index


def sidecar(node: str, dest: str, sid: str = "", status: str = PASSING, key: str = "DestinationServiceName",
            tags: list[str] | None = None, port: int = 21000) -> dict[str, Any]:
    """Register a node with serfHealth and one connect-proxy fronting `dest`, with a status check."""
    sid = sid or f"{dest}-sidecar-proxy"
    svc = Service(node=node, id=sid, service=f"{dest}-sidecar-proxy", kind="connect-proxy", port=port,
                  tags=list(tags or []), proxy={key: dest, "LocalServicePort": 8080})
    return commands.register(
        Node(node=node, address="10.0.0.1"), svc,
        [Check(node=node, check_id="serfHealth", status=PASSING),
         Check(node=node, check_id=f"service:{sid}", status=status, service_id=sid)])


def plain(node: str, name: str, sid: str = "", native: bool = False) -> dict[str, Any]:
    sid = sid or name
    svc = Service(node=node, id=sid, service=name, port=8080, connect={"Native": True} if native else {})
    return commands.register(Node(node=node, address="10.0.0.1"), svc,
                             [Check(node=node, check_id=f"service:{sid}", status=PASSING, service_id=sid)])


def ids(cat: Catalog, name: str, tag: str | None = None) -> list[tuple[str, str]]:
    return [(i.node.node, i.service.id) for i in cat.connect_instances(name, tag)]


def test_sidecars_and_native_instances_are_found_by_the_service_they_front() -> None:
    cat = Catalog()
    apply(cat, plain("n1", "web"))
    apply(cat, sidecar("n1", "web"))
    apply(cat, sidecar("n2", "web", key="destination_service_name"))  # the snake_case spelling counts too
    apply(cat, plain("n3", "api", native=True))
    apply(cat, plain("n3", "db"))
    assert ids(cat, "web") == [("n1", "web-sidecar-proxy"), ("n2", "web-sidecar-proxy")]
    assert ids(cat, "WEB") == ids(cat, "web")  # names are case-insensitive, as everywhere in the catalog
    assert ids(cat, "api") == [("n3", "api")]
    assert ids(cat, "db") == [] and ids(cat, "web-sidecar-proxy") == []
    inst = cat.connect_instances("web")[0]
    assert [c.check_id for c in inst.checks] == ["serfHealth", "service:web-sidecar-proxy"]
    # the service lookup is unchanged: the sidecar is its own service
    assert [i.service.id for i in cat.service_instances("web")] == ["web"]


def test_tag_filters_on_the_proxy_instance_tags() -> None:
    cat = Catalog()
    apply(cat, sidecar("n1", "web", tags=["v1"]))
    apply(cat, sidecar("n2", "web", tags=["v2"]))
    assert ids(cat, "web", "V1") == [("n1", "web-sidecar-proxy")]


def test_changing_the_destination_moves_the_instance_and_wakes_both() -> None:
    cat = Catalog()
    rec = Recorder(cat)
    apply(cat, sidecar("n1", "web", sid="p1"))
    assert "connect:web" in rec.last()
    before_web = cat.index_for(["connect:web"])
    at = apply(cat, sidecar("n1", "db", sid="p1"))
    assert {"connect:web", "connect:db"} <= rec.last()
    assert ids(cat, "web") == [] and ids(cat, "db") == [("n1", "p1")]
    assert cat.index_for(["connect:web"]) == at > before_web


def test_watch_key_follows_checks_node_health_and_deregistration() -> None:
    cat = Catalog()
    rec = Recorder(cat)
    apply(cat, sidecar("n1", "web"))
    # a service check on the proxy
    at = apply(cat, commands.register(Node(node="n1", address="10.0.0.1"), None, [
        Check(node="n1", check_id="service:web-sidecar-proxy", status=CRITICAL,
              service_id="web-sidecar-proxy")]))
    assert "connect:web" in rec.last() and cat.index_for(["connect:web"]) == at
    assert cat.connect_instances("web")[0].status == CRITICAL
    # the node's health
    at = apply(cat, commands.register(Node(node="n1", address="10.0.0.1"), None, [
        Check(node="n1", check_id="serfHealth", status=CRITICAL)]))
    assert "connect:web" in rec.last() and cat.index_for(["connect:web"]) == at
    # the node's address (every instance's rendering changes)
    at = apply(cat, commands.register(Node(node="n1", address="10.0.0.2")))
    assert "connect:web" in rec.last()
    # a deleted check, then the proxy itself
    apply(cat, commands.deregister("n1", check_id="service:web-sidecar-proxy"))
    assert "connect:web" in rec.last()
    at = apply(cat, commands.deregister("n1", service_id="web-sidecar-proxy"))
    assert "connect:web" in rec.last() and ids(cat, "web") == []
    # a whole node going away takes its sidecars with it
    apply(cat, sidecar("n2", "web"))
    at = apply(cat, commands.deregister("n2"))
    assert "connect:web" in rec.last() and ids(cat, "web") == [] and cat.index_for(["connect:web"]) == at


def test_unrelated_writes_leave_the_key_alone() -> None:
    cat = Catalog()
    rec = Recorder(cat)
    apply(cat, sidecar("n1", "web"))
    at = cat.index_for(["connect:web"])
    apply(cat, plain("n2", "db"))
    apply(cat, plain("n1", "web"))  # the destination itself is not mesh-capable: not a connect change
    apply(cat, commands.kv_set("k", b"v"))
    assert all("connect:web" not in keys for keys in rec.events[1:])
    assert cat.index_for(["connect:web"]) == at
    apply(cat, sidecar("n1", "web"))  # identical re-registration bumps nothing
    assert cat.index_for(["connect:web"]) == at


def test_native_flag_toggled_off_leaves_the_index() -> None:
    cat = Catalog()
    apply(cat, plain("n1", "api", native=True))
    at = apply(cat, plain("n1", "api", native=False))
    assert ids(cat, "api") == []
    assert cat.index_for(["connect:api"]) == at  # its watchers learn that it left


def test_hostile_proxy_fields_are_not_indexed_and_do_not_crash() -> None:
    cat = Catalog()
    bad: list[Any] = [{"DestinationServiceName": 5}, {"DestinationServiceName": ""}, {}, "web", None,
                      {"DestinationServiceName": ["web"]}]
    for i, proxy in enumerate(bad):
        svc = Service(node="n1", id=f"p{i}", service="p", kind="connect-proxy", proxy=proxy)
        apply(cat, commands.register(Node(node="n1"), svc))
    svc = Service(node="n1", id="x", service="x", connect="native")  # type: ignore[arg-type]
    apply(cat, commands.register(Node(node="n1"), svc))
    svc = Service(node="n1", id="y", service="y", connect={"Native": "true"})  # only the boolean counts
    apply(cat, commands.register(Node(node="n1"), svc))
    assert cat._connect_by_target == {}
    assert ids(cat, "web") == [] and ids(cat, "x") == [] and ids(cat, "y") == []
    # a plain (non-proxy) service with a proxy block is not a sidecar
    assert connect_target(Service(node="n", id="z", service="z", proxy={"DestinationServiceName": "web"})) is None


def test_snapshot_restore_rebuilds_the_index() -> None:
    cat = Catalog()
    apply(cat, sidecar("n1", "web"))
    apply(cat, sidecar("n2", "web", key="destination_service_name"))
    apply(cat, plain("n3", "api", native=True))
    back = Catalog.restore(cat.snapshot())
    assert back._connect_by_target == cat._connect_by_target
    assert ids(back, "web") == ids(cat, "web") and ids(back, "api") == [("n3", "api")]
    assert back.index_for(["connect:web"]) == cat.index_for(["connect:web"])
    apply(back, commands.deregister("n1"))
    assert ids(back, "web") == [("n2", "web-sidecar-proxy")]


_NODES = ["n1", "n2"]
_NAMES = ["web", "Web", "db"]
_op = st.one_of(
    st.tuples(st.just("proxy"), st.sampled_from(_NODES), st.sampled_from(["p1", "p2"]), st.sampled_from(_NAMES)),
    st.tuples(st.just("native"), st.sampled_from(_NODES), st.sampled_from(["p1", "s1"]), st.sampled_from(_NAMES),
              st.booleans()),
    st.tuples(st.just("plain"), st.sampled_from(_NODES), st.sampled_from(["p1", "s1"]), st.sampled_from(_NAMES)),
    st.tuples(st.just("dereg"), st.sampled_from(_NODES), st.sampled_from(["p1", "p2", "s1", ""])),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=25))
def test_index_always_equals_a_full_scan(ops: list[tuple[Any, ...]]) -> None:
    """Whatever the order of writes, the index holds exactly what a scan over every row would find."""
    cat = Catalog()
    for op in ops:
        if op[0] == "proxy":
            svc = Service(node=op[1], id=op[2], service="px", kind="connect-proxy",
                          proxy={"DestinationServiceName": op[3]})
        elif op[0] == "native":
            svc = Service(node=op[1], id=op[2], service=op[3], connect={"Native": op[4]})
        elif op[0] == "plain":
            svc = Service(node=op[1], id=op[2], service=op[3])
        else:
            apply(cat, commands.deregister(op[1], service_id=op[2]))
            continue
        apply(cat, commands.register(Node(node=op[1]), svc))
    for name in ("web", "db"):
        expect = sorted((s.node, s.id) for s in cat._services.values() if connect_target(s) == name)
        assert ids(cat, name) == expect
    assert Catalog.restore(cat.snapshot())._connect_by_target == cat._connect_by_target


class _CountingRows(dict):  # type: ignore[type-arg]
    """The catalog's service table, counting every pass over all of it."""

    scans = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        type(self).scans += 1
        return super().__iter__()

    def values(self):  # type: ignore[no-untyped-def]
        type(self).scans += 1
        return super().values()

    def items(self):  # type: ignore[no-untyped-def]
        type(self).scans += 1
        return super().items()

    def keys(self):  # type: ignore[no-untyped-def]
        type(self).scans += 1
        return super().keys()


def test_a_write_never_scans_the_service_table() -> None:
    """No pass over all services per write (with 2,000 sidecars of one destination registered, a scan
    would make each write cost the whole table): the table itself counts the passes."""
    big = Catalog()
    for i in range(2_000):
        big.apply(big.last_index + 1, sidecar(f"b{i}", "web"))
    rows = _CountingRows(big._services)
    big._services = rows
    for i in range(200):
        apply(big, sidecar(f"y-{i}", "web", port=21000))
        apply(big, sidecar(f"y-{i}", "api"))  # a second sidecar on the node, for another destination
    assert _CountingRows.scans == 0
    assert len(big.connect_instances("api")) == 200 and len(big.connect_instances("web")) == 2_200
    assert _CountingRows.scans == 0
