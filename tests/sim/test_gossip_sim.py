"""Seeded gossip scenarios on the simulator: convergence, join storms, detection within the suspicion bound,
no false deaths under 10 % loss, agreement after a partition heals, restarts, exact replay.

Seeds: GOSSIP_SIM_SEEDS=<n> scales every scenario's seed count (CI's default totals about 520 runs, ~40 s on
two cores); GOSSIP_SIM_SEED=<seed> runs just that seed. A failure names its seed and the command that replays it.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from meshagent.gossip import limits
from meshagent.gossip import serf_messages as sm
from meshagent.gossip.keyring import Keyring
from meshagent.gossip.messages import MessageType, NodeState
from meshagent.gossip.serf import Status
from meshagent.gossip.tunables import GossipConfig, suspicion_timeout

from tests.support import hostile_gossip as h
from tests.support.sim.gossip_sim import PORT, Sim, converge_rounds, steady_sim

pytestmark = pytest.mark.sim

SCALE = float(os.environ.get("GOSSIP_SIM_SEEDS", "500")) / 500


def _seeds(base: int, count: int) -> list[int]:
    one = os.environ.get("GOSSIP_SIM_SEED")
    if one is not None:
        return [int(one)]
    return [base + i for i in range(max(1, round(count * SCALE)))]


def _run(seed: int, scenario: Callable[[int], None], name: str) -> None:
    try:
        scenario(seed)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nseed {seed} failed; replay: GOSSIP_SIM_SEED={seed} "
                             f".venv/bin/pytest tests/sim/test_gossip_sim.py -k {name}") from None


def _join_all(sim: Sim) -> None:
    """Node 0 starts alone; every other joins through a random earlier node, a little apart."""
    names = list(sim.nodes)
    sim.start(names[0], [])
    for i, name in enumerate(names[1:], 1):
        sim.run_until(sim.now + sim.rng.uniform(0.0, 0.05))
        sim.start(name, [names[sim.rng.randrange(i)]])


def _settle(sim: Sim, limit: float = 40.0) -> None:
    """Run until every live node sees every other alive. A joiner's alive message goes out a limited number
    of times, so now and then a node misses it until the next push-pull (every 30 s), as in memberlist."""
    end = sim.now + limit
    while not sim.converged():
        assert sim.now < end, f"no convergence within {limit:.0f} s"
        sim.run_until(sim.now + 0.5)


def detection_bound(config: GossipConfig, n: int) -> float:
    """Worst case from a crash to every live node declaring it failed, for a converged cluster (all scores 0).

    - first probe: every live node walks a shuffled round robin over the n - 1 others, one per probe_interval,
      so someone sends the crashed node a ping within (n - 1) intervals (in practice far sooner: n - 1 nodes
      walk independently);
    - that probe fails one probe_interval later (direct timeout, then indirect pings until the interval ends);
    - the suspicion then runs at most suspicion_max_timeout_mult x the minimal timeout
      (suspicion_mult x max(1, log10 n) x probe_interval); confirmations only shorten it;
    - the dead message (or each node's own expiring suspicion) reaches everyone within a few gossip rounds:
      log2 n + 4 of them.
    For n = 12 that is 11 + 1 + 6 x 4.32 + 8 x 0.2 = 39.5 s; measured detections are typically 6-15 s.
    """
    probe_round = (n - 1) * config.probe_interval
    failed_probe = config.probe_interval
    suspicion = config.suspicion_max_timeout_mult * suspicion_timeout(config.suspicion_mult, n, config.probe_interval)
    spread = (math.ceil(math.log2(n)) + 4) * config.gossip_interval
    return probe_round + failed_probe + suspicion + spread


def scenario_converge(seed: int, n: int = 50) -> None:
    """50 nodes join one by one through a random earlier node; every view holds everyone alive within 30 s of
    the last join (a missed alive waits for the next push-pull, every 30 s; so 30 s is the bound)."""
    sim = Sim(seed, n)
    _join_all(sim)
    for _ in range(60):
        sim.run_until(sim.now + 0.5)
        if sim.converged():
            return
    raise AssertionError(f"{n} nodes did not converge within 30 s of the last join")


# Consul's gossip tags (role, dc, id, versions, ports): they make each alive message about 240 bytes, against
# about 65 for a serf agent without tags, so a packet holds five of them instead of twenty.
CONSUL_TAGS = {"role": "consul", "dc": "dc1", "id": "6d1c2f5e-1111-2222-3333-444455556666", "vsn": "2",
               "vsn_min": "2", "vsn_max": "3", "build": "0.1.0", "segment": "", "port": "8300", "bootstrap": "1",
               "raft_vsn": "3", "wan_join_port": "8302"}
JOIN_STORM_BOUND = 2.5  # seconds from the first join to full convergence, in any storm
JOIN_STORM_MEDIAN = 1.2  # seconds (six gossip rounds), over many storms


def join_storm(seed: int, n: int = 30) -> float:
    """The gossip benchmark's join, simulated: n nodes with Consul's tags start unjoined (at random moments,
    so their timers are out of phase), then all but the first join the first, eight at a time; seconds from
    the first join until every node sees every other alive (60 if never)."""
    sim = Sim(seed, n, tags=CONSUL_TAGS)
    names = list(sim.nodes)
    for name in names:
        sim.run_until(sim.now + sim.rng.uniform(0.0, 0.2))
        sim.start(name, [])
    sim.run_until(sim.now + sim.rng.uniform(0.0, 0.2))
    first = sim.now
    for i, name in enumerate(names[1:]):
        node = sim.nodes[name]
        sim._push_pull(node, (sim.nodes[names[0]].ip, PORT), True)
        if i % 8 == 7:
            sim.run_until(sim.now + 0.02)
    while not sim.converged():
        if sim.now - first > 60:
            return 60.0
        sim.run_until(sim.now + 0.01)
    return sim.now - first


def scenario_join_storm(seed: int) -> None:
    took = join_storm(seed)
    assert took <= JOIN_STORM_BOUND, f"a join storm of 30 took {took:.2f} s to converge (bound {JOIN_STORM_BOUND} s)"


def scenario_crash_detected(seed: int, n: int = 12) -> None:
    """12 nodes: the bound is about one probe round, and 12 keeps 120 seeds quick."""
    sim = Sim(seed, n)
    _join_all(sim)
    _settle(sim)
    victim = sim.rng.choice(list(sim.nodes))
    crashed_at = sim.now
    early = [(t, who) for t, who, subject in sim.failures if subject == victim]
    assert not early, f"{victim} was declared failed before it crashed (at {crashed_at:.1f} s): {early}"
    sim.crash(victim)
    bound = detection_bound(sim.config, n)
    live = {x.name for x in sim.live()}
    declared: dict[str, float] = {}
    while sim.now < crashed_at + bound + 1 and set(declared) != live:
        sim.run_until(sim.now + 0.5)
        for t, who, subject in sim.failures:
            if subject == victim and who not in declared:
                declared[who] = t - crashed_at
    missing = sorted(live - set(declared))
    assert not missing, f"{missing} did not declare {victim} failed within the bound {bound:.1f} s"
    assert max(declared.values()) <= bound, f"slowest detection {max(declared.values()):.1f} s > {bound:.1f} s"
    # Nobody else was harmed.
    wrong = [(t, who, subject) for t, who, subject in sim.failures if subject != victim]
    assert not wrong, f"live members declared failed: {wrong}"
    assert all(sim.status(a, b) == Status.ALIVE for a in live for b in live)


def scenario_loss_no_false_dead(seed: int, n: int = 10) -> None:
    """10 nodes, 10 % loss and 2 % duplication on every link, 120 s: suspicions come and go, no death."""
    sim = Sim(seed, n, loss=0.10, dup=0.02)
    _join_all(sim)
    sim.run_until(sim.now + 120)
    assert not sim.failures, f"live members declared failed under 10% loss (time, viewer, subject): {sim.failures}"
    for a in sim.live():
        for b in sim.live():
            assert sim.swim_state(a.name, b.name) != NodeState.DEAD, f"{a.name} holds live {b.name} dead"


def scenario_partition_heals(seed: int, n: int = 10) -> None:
    """10 nodes split in halves for 60 s (each side declares the other failed), then healed: within 120 s
    (periodic push-pull every 30 s plus Serf's reconnect) every view holds everyone alive. 10 nodes suffice."""
    sim = Sim(seed, n)
    _join_all(sim)
    _settle(sim)
    names = list(sim.nodes)
    sim.rng.shuffle(names)
    half = set(names[: n // 2])
    sim.partition(half, set(names) - half)
    sim.run_until(sim.now + 60)  # long enough for each side to declare the other failed
    sim.heal()
    # Failed members are retried by push-pull (periodic, scaled) and Serf's reconnect; the sim runs the
    # core's periodic push-pull, which is enough to merge the views again.
    for _ in range(240):
        sim.run_until(sim.now + 0.5)
        if sim.converged():
            return
    views = {a.name: {b.name: sim.status(a.name, b.name) for b in sim.live()} for a in sim.live()}
    raise AssertionError(f"views still differ 120 s after the partition healed: {views}")


def scenario_restart(seed: int, n: int = 8) -> None:
    """8 nodes: one crashes, is declared failed everywhere, comes back as a fresh process (incarnation 1, same
    name and address) and must be alive everywhere within 30 s, by refuting the views that hold it dead."""
    sim = Sim(seed, n)
    _join_all(sim)
    _settle(sim)
    victim = sim.rng.choice(list(sim.nodes)[1:])
    sim.crash(victim)
    sim.run_until(sim.now + 40)
    assert all(sim.status(x.name, victim) == Status.FAILED for x in sim.live()), "crash not detected"
    sim.restart(victim, [next(iter(sim.nodes))])
    for _ in range(60):
        sim.run_until(sim.now + 0.5)
        if sim.converged():
            return
    raise AssertionError(f"restarted {victim} is not alive everywhere within 30 s")


@functools.cache
def _hostile_packets(names: tuple[str, ...]) -> list[bytes]:
    """Hostile packets naming the simulated nodes, drawn once (hypothesis is the slow part)."""
    return h.draw_many(h.packet(names), 200, 11)


def _incarnations(sim: Sim) -> dict[tuple[str, str], int]:
    return {(v.name, mem.name): mem.incarnation for v in sim.live() for mem in v.swim.members.values()}


def scenario_hostile_outsider(seed: int, n: int = 8) -> None:
    """An outsider sends 200 hostile packets to random nodes of a steady cluster over 10 s: every one is
    refused, nobody is declared failed, no incarnation or Lamport clock moves."""
    sim = steady_sim(seed, n)
    names = tuple(sim.nodes)
    before = _incarnations(sim), [(x.serf.clock.time, x.serf.event_clock.time) for x in sim.live()]
    packets = _hostile_packets(names)
    for packet in packets:
        sim.run_until(sim.now + sim.rng.uniform(0, 0.1))
        sim.inject(sim.rng.choice(names), packet)
    sim.run_until(sim.now + 5.0)
    refused = sim.bad + sum(x.serf.bad_messages for x in sim.live())
    assert refused >= len(packets), f"only {refused} of {len(packets)} hostile packets refused"
    assert sim.failures == [], sim.failures
    assert sim.converged()
    assert (_incarnations(sim), [(x.serf.clock.time, x.serf.event_clock.time) for x in sim.live()]) == before


def scenario_claim_at_the_bound(seed: int, n: int = 6) -> None:
    """A dead claim at the claim bound is refuted (incarnation bound + 1, within memberlist's uint32); one past
    the bound, or at 2^64-1, is refused everywhere and kills nobody."""
    sim = steady_sim(seed, n)
    names = list(sim.nodes)
    victim = names[1]
    for dst in names:
        sim.inject(dst, h.overflow_claim(MessageType.DEAD, victim, limits.CLAIM_INCARNATION_MAX))
    sim.run_until(sim.now + 10.0)
    assert sim.converged(), "the victim did not refute a claim at the bound"
    assert sim.nodes[victim].swim.incarnation == limits.CLAIM_INCARNATION_MAX + 1
    failures = len(sim.failures)
    for dst in names:
        for inc in (limits.CLAIM_INCARNATION_MAX + 2, limits.INCARNATION_MAX, h.U64_MAX):
            sim.inject(dst, h.overflow_claim(MessageType.DEAD, victim, inc))
            sim.inject(dst, h.overflow_claim(MessageType.SUSPECT, victim, inc))
    sim.run_until(sim.now + 10.0)
    assert len(sim.failures) == failures, sim.failures[failures:]
    assert sim.converged() and sim.bad == 6 * n
    assert all(inc <= limits.CLAIM_INCARNATION_MAX + 1 for inc in _incarnations(sim).values())


@pytest.mark.parametrize("seed", _seeds(9000, 6))
def test_a_hostile_outsider_changes_nothing(seed: int) -> None:
    _run(seed, scenario_hostile_outsider, "hostile_outsider")


@pytest.mark.parametrize("seed", _seeds(9100, 6))
def test_claims_at_the_bound_are_refuted_and_beyond_it_refused(seed: int) -> None:
    _run(seed, scenario_claim_at_the_bound, "claims_at_the_bound")


def scenario_user_event(seed: int, n: int = 20) -> None:
    """20 nodes, 10 % loss: a user event reaches every node within 10 s (50 gossip rounds)."""
    sim = Sim(seed, n, loss=0.10)
    _join_all(sim)
    _settle(sim)
    sender = sim.rng.choice(list(sim.nodes))
    sim.user_event(sender, "deploy", f"{seed}".encode())  # as the runtime fires it (not coalesced)
    fired = sim.now
    while sim.now < fired + 10:
        sim.run_until(sim.now + 0.2)
        if all(any(e.name == "deploy" for e in x.user_events) for x in sim.live() if x.name != sender):
            return
    missing = [x.name for x in sim.live() if x.name != sender and not any(e.name == "deploy" for e in x.user_events)]
    raise AssertionError(f"a user event from {sender} did not reach {missing} within 10 s under 10% loss")


@pytest.mark.parametrize("seed", _seeds(6000, 30))
def test_user_event_reaches_every_node_under_loss(seed: int) -> None:
    _run(seed, scenario_user_event, "user_event")


OLD_KEY, NEW_KEY = bytes(range(32)), bytes(range(100, 132))


def _key_query(sim: Sim, asker: str, query: str, key: bytes = b"") -> list[sm.KeyResponseMsg]:
    """Run a key query from `asker` as the runtime's key_operation does; every node's decoded answer, once all
    live nodes have answered (within 10 s)."""
    payload = sm.key_request_payload(key) if query != sm.LIST_KEYS_QUERY else b""
    qid = sim.query(asker, query, payload, timeout=10.0)
    deadline = sim.now + 10
    while len(sim.nodes[asker].answers[qid]) < len(sim.live()) and sim.now < deadline:
        sim.run_until(sim.now + 0.05)
    answers = sim.nodes[asker].answers[qid]
    assert sorted(a.from_node for a in answers) == sorted(x.name for x in sim.live()), (query, answers)
    decoded = [sm.decode(a.payload) for a in answers]
    assert all(isinstance(r, sm.KeyResponseMsg) for r in decoded)
    return decoded  # type: ignore[return-value]


def scenario_key_rotation(seed: int, n: int = 8) -> None:
    """A key rotation (install, use, remove, list) by Serf queries, with 5 % of packets duplicated (no loss: a lost
    answer is never resent, in Serf too): every node answers each query once over the simulated network, every
    node's keyring changes, and each change is persisted (KeyringChanged)."""
    sim = Sim(seed, n, dup=0.05, keys=(OLD_KEY,))
    _join_all(sim)
    _settle(sim)
    asker = sim.rng.choice(list(sim.nodes))
    for query, key, keyring in ((sm.INSTALL_KEY_QUERY, NEW_KEY, (OLD_KEY, NEW_KEY)),
                                (sm.USE_KEY_QUERY, NEW_KEY, (NEW_KEY, OLD_KEY)),
                                (sm.REMOVE_KEY_QUERY, OLD_KEY, (NEW_KEY,))):
        answers = _key_query(sim, asker, query, key)
        assert all(r.result for r in answers), (query, [r.message for r in answers if not r.result])
        for x in sim.live():
            assert x.serf.keyring is not None and x.serf.keyring.keys == keyring, (query, x.name)
            assert x.saved_keys and x.saved_keys[-1] == keyring, (query, x.name, x.saved_keys)
    listed = _key_query(sim, asker, sm.LIST_KEYS_QUERY)
    encoded = Keyring([NEW_KEY]).to_base64()
    assert all(list(r.keys) == encoded and r.primary_key == encoded[0] for r in listed)
    assert all(len(x.saved_keys) == 3 for x in sim.live())  # list-keys changes nothing, so saves nothing


@pytest.mark.parametrize("seed", _seeds(9200, 8))
def test_a_key_rotation_and_its_queries_run_through_the_simulator(seed: int) -> None:
    _run(seed, scenario_key_rotation, "key_rotation")


@pytest.mark.parametrize("seed", _seeds(1000, 10))
def test_fifty_nodes_converge_after_joins(seed: int) -> None:
    _run(seed, scenario_converge, "converge")


@pytest.mark.parametrize("seed", _seeds(8000, 10))
def test_a_join_storm_with_consul_tags_converges_within_the_bound(seed: int) -> None:
    """Without an early push-pull after joining, now and then a member missed a fellow joiner's alive for good
    and waited for the periodic push-pull: 27 s and more, in 21 storms of 200."""
    _run(seed, scenario_join_storm, "join_storm")


def test_join_storms_with_consul_tags_converge_in_a_few_gossip_rounds() -> None:
    """The median over 11 storms. Five alive messages with Consul's tags fill a plain packet; compressed
    when full, a packet carries about twice as many: 2.0 s before, 0.8 s after (serf itself, given the
    same tags, took 1.5 s on loopback)."""
    took = sorted(join_storm(seed) for seed in range(8100, 8111))
    assert statistics.median(took) <= JOIN_STORM_MEDIAN, f"median {statistics.median(took):.2f} s over {took}"


@pytest.mark.parametrize("seed", _seeds(2000, 120))
def test_crash_is_declared_failed_by_every_live_node_within_the_bound(seed: int) -> None:
    _run(seed, scenario_crash_detected, "crash")


@pytest.mark.parametrize("seed", _seeds(3000, 40))
def test_ten_percent_loss_never_kills_a_live_node(seed: int) -> None:
    _run(seed, scenario_loss_no_false_dead, "loss")


@pytest.mark.parametrize("seed", _seeds(4000, 30))
def test_views_agree_after_a_partition_heals(seed: int) -> None:
    _run(seed, scenario_partition_heals, "partition")


@pytest.mark.parametrize("seed", _seeds(5000, 265))
def test_restarted_node_is_alive_everywhere_again(seed: int) -> None:
    _run(seed, scenario_restart, "restart")


@pytest.mark.parametrize("seed", _seeds(7000, 5))
def test_one_fact_reaches_fifty_nodes_in_a_few_gossip_rounds(seed: int) -> None:
    def scenario(seed: int) -> None:
        rounds, _ = converge_rounds(50, seed, GossipConfig(eager_gossip=False))  # tick-paced: time counts rounds
        assert rounds <= 2 * math.log2(50), f"{rounds:.1f} gossip rounds to reach 50 nodes (log2 50 = 5.6)"

    _run(seed, scenario, "fact_reaches")


Log = list[tuple[float, str, str]]


def replay_run(seed: int) -> tuple[Log, Log, list[tuple[str, str, int]]]:
    """8 nodes under 5 % loss and duplication: joins, a crash, a restart; every delivered message (time, link,
    bytes), every failure declaration and the final views."""
    sim = Sim(seed, 8, loss=0.05, dup=0.05, record=True)
    _join_all(sim)
    sim.run_until(20)
    sim.crash("n003")
    sim.run_until(45)
    sim.restart("n003", ["n000"])
    sim.run_until(60)
    views = [(a.name, b, int(st)) for a in sim.live() for b, st in
             sorted((m.name, m.status) for m in a.serf.members.values())]
    return sim.trace, sim.failures, views


def replay_digest(seed: int) -> str:
    """A short digest of `replay_run(seed)`, to compare runs in different processes."""
    return hashlib.sha256(repr(replay_run(seed)).encode()).hexdigest()


def test_a_seed_replays_exactly() -> None:
    first = replay_run(77)
    assert len(first[0]) > 1000 and first[1], "the run delivers messages and declares the crash"
    assert first == replay_run(77)
    assert first[0] != replay_run(78)[0]


def test_a_seed_replays_exactly_in_a_new_process_with_another_hash_seed() -> None:
    """What a replay from a printed seed really does: a fresh interpreter, another str hash seed."""
    code = "from tests.sim.test_gossip_sim import replay_digest; print(replay_digest(77))"
    root = str(Path(__file__).resolve().parents[2])
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": h, "PYTHONPATH": root}).stdout.strip()
               for h in ("0", "12345")}
    assert digests == {replay_digest(77)}
