"""Red team (issue 16): a transaction's results are bounded (txn.MAX_RESULT_BYTES), in the FSM, so that a small
write of many get-tree ops cannot make every server and client replica build the store many times over."""

from __future__ import annotations

from meshagent.agent.catalog import commands
from meshagent.agent.catalog.state import Catalog
from meshagent.agent.catalog.txn import MAX_OPS, MAX_RESULT_BYTES, read_txn

VALUE = b"x" * (512 * 1024)  # one object shared by every key: the test's memory stays small


def _catalog(keys: int) -> Catalog:
    cat = Catalog()
    for i in range(keys):
        cat.apply(i + 1, commands.kv_set(f"t/{i:04d}", VALUE))
    return cat


def test_sixty_four_get_trees_of_a_big_store_fail_and_roll_back() -> None:
    cat = _catalog(80)  # 40 MiB of values: one tree is over the bound already, 64 of them 2.5 GiB of results
    ops = [{"type": "kv", "verb": "set", "key": "w", "value": b"1"}]
    ops += [{"type": "kv", "verb": "get-tree", "key": ""}] * (MAX_OPS - 1)
    outcome = cat.apply(cat.last_index + 1, commands.txn(ops, 1.0))
    assert outcome["results"] is None
    assert [e["op_index"] for e in outcome["errors"]] == [1]
    assert "exceed" in outcome["errors"][0]["what"] and "?recurse" in outcome["errors"][0]["what"]
    assert cat.kv_get("w") is None  # rolled back
    read = read_txn(cat, [{"type": "kv", "verb": "get-tree", "key": ""}] * MAX_OPS)
    assert read["results"] is None and "exceed" in read["errors"][0]["what"]


def test_results_under_the_bound_are_answered_in_full() -> None:
    cat = _catalog(20)  # 10 MiB: three trees fit under 32 MiB, a fourth does not
    assert MAX_RESULT_BYTES == 32 * 1024 * 1024
    three = read_txn(cat, [{"type": "kv", "verb": "get-tree", "key": "t/"}] * 3)
    assert three["errors"] is None and len(three["results"]) == 60
    four = read_txn(cat, [{"type": "kv", "verb": "get-tree", "key": "t/"}] * 4)
    assert four["results"] is None and four["errors"][0]["op_index"] == 3
